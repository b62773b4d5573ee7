"""SLA forward variants at A14B shapes (B=1, H=40, D=128, top-k 0.1, block_q 128, block_k 64): speed and accuracy of
every variant of turbokernels.sla_triton next to dense SDPA and the current default kernel, plus the side kernels.

    python3 -m bench.sla_sweep [--res 480p 720p] [--only SUBSTR ...] [--skip SUBSTR ...]

q, k, v are laid out as the DiT hands them over: (B, H, L, D) views of one fused (B, L, 3, H, D) projection output
(row stride 3*H*D), so the TMA kernel is timed on the strides it will see; one extra row times the default kernel on
contiguous (B, H, L, D) tensors, the layout of bench/kernels_micro.py's numbers.

Per variant: the whole op and the sparse kernel alone (given the default side inputs; for fp8 P.V that includes
v's channel absmax and its transposed e4m3 copy), median of 10 (CUDA events);
accuracy against turbokernels.reference.sla_attention on 3 heads (the reference keeps a token-level mask; the block map is
per head, so this is exact) and against the default kernel's output on all heads. A variant that fails to build or
run is recorded with its error and the sweep goes on; if the CUDA context itself dies (a sticky error), the rest of
that resolution is skipped and the JSON says so: rerun with --skip naming the culprit.

Prints tables and writes sla_sweep.json ($OUT or bench/results/) after every variant, so a killed run keeps what it had.
"""

from __future__ import annotations

import argparse
import math
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import GRIDS, bench_ms, cosine, environment, print_table, rel_err, write_json

HEADS, HEAD_DIM = 40, 128
TOPK, BLOCK_Q, BLOCK_K = 0.1, 128, 64
REF_HEADS = [0, 17, 39]
# Pass marks: the GPU tests' bounds (cosine vs the reference) and bf16-rounding agreement with the default kernel.
MIN_COSINE = 0.999
MAX_REL_VS_DEFAULT = 1e-2
JSON_NAME = "sla_sweep.json"
DEVICE = "cuda"  # the CPU test of this script's logic swaps in "cpu" (Triton interpreter) and tiny shapes

# (label, keyword arguments of sla_triton.sla_attention), every kernel choice spelled out so the rows do not move
# when the defaults do. The first row is the first kernel (pointer loads, separate side passes): every other row
# is compared with it. Triton's automatic warp specialisation of the TMA loop (no effect on sm_90, 35.6 ms) and the
# int8 Q.K^T option (no faster in the Gluon kernel) were retired; their rows are in bench/README.md. 6 kernel rows +
# dense + contiguous = 8 (dropped earlier for time: 64-row tiles, 55.8 ms at 720p; 3 TMA stages, 35.9 ms; one key
# block per step, 39.5 ms).
_POINTER = {"sparse_impl": "pointer", "side_impl": "separate"}
_TMA = {"sparse_impl": "tma", "side_impl": "separate"}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("first kernel: pointer m128 bpi2 w8 s2", _POINTER),
    ("pointer + fused side", {**_POINTER, "side_impl": "fused"}),
    ("tma bpi2 w8 s2", _TMA),
    ("tma bpi2 w8 s2 + fused side (default)", {**_TMA, "side_impl": "fused"}),
    ("gluon wgmma pipeline + fused side", {"sparse_impl": "gluon", "side_impl": "fused"}),
    ("gluon + fp8 P.V (approx.)", {"sparse_impl": "gluon", "side_impl": "fused", "pv_fp8": True}),
]
SIDE_KEYS = ("side_impl",)  # keyword arguments that go to side_inputs, the rest to sparse_forward


def select_variants(only: list[str] | None, skip: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """VARIANTS filtered by label substrings; the default always stays (every comparison is against it)."""
    chosen = []
    for i, (label, kwargs) in enumerate(VARIANTS):
        keep = i == 0 or ((not only or any(s in label for s in only)) and not any(s in label for s in skip or []))
        if keep:
            chosen.append((label, kwargs))
    return chosen


def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(side_inputs keywords, sparse_forward keywords) of one variant."""
    side = {k: v for k, v in kwargs.items() if k in SIDE_KEYS}
    return side, {k: v for k, v in kwargs.items() if k not in SIDE_KEYS}


def sparse_tflops(length: int) -> float:
    """TFLOP of the sparse branch (QK^T and PV over the chosen key blocks), as bench/kernels_micro.py counts it."""
    n_sel = min(math.ceil(length / BLOCK_K), max(1, int(TOPK * math.ceil(length / BLOCK_K))))
    return 4 * HEADS * length * n_sel * BLOCK_K * HEAD_DIM / 1e12


def accuracy(out: torch.Tensor, ref: torch.Tensor, default: torch.Tensor | None) -> dict[str, Any]:
    sub = out[:, REF_HEADS]
    acc: dict[str, Any] = {"cosine": cosine(sub, ref), "rel_err": rel_err(sub, ref),
                           "max_abs_err": (sub.float() - ref.float()).abs().max().item()}
    if default is not None:
        acc["rel_vs_default"] = rel_err(out, default)
        acc["max_abs_vs_default"] = (out.float() - default.float()).abs().max().item()
    acc["ok"] = acc["cosine"] >= MIN_COSINE and acc.get("rel_vs_default", 0.0) <= MAX_REL_VS_DEFAULT
    return acc


def _context_alive() -> bool:
    try:
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        torch.zeros(1, device=DEVICE).add_(1).item()
        return True
    except Exception:  # a sticky CUDA error: nothing more can run in this process
        return False


def sla_sweep(res: str, variants: list[tuple[str, dict[str, Any]]], results: dict[str, Any]) -> None:
    from turbokernels import reference, sla_triton

    length = math.prod(GRIDS[res])
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32  # the interpreter computes bf16 dots slowly
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    qkv = torch.randn(1, length, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=dtype, generator=gen)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    w = torch.randn(HEAD_DIM, HEAD_DIM, device=DEVICE, generator=gen) * 0.05
    b = torch.randn(HEAD_DIM, device=DEVICE, generator=gen) * 0.05
    tflop = sparse_tflops(length)
    section: dict[str, Any] = {"length": length, "layout": "views of fused (B, L, 3, H, D) qkv",
                               "tma_supported": sla_triton.tma_supported(q, k, v), "sparse_tflop": tflop,
                               "ref_heads": REF_HEADS, "rows": [], "parts": []}
    results[f"sla_{res}"] = section
    rows: list[dict[str, Any]] = section["rows"]
    print(f"\n== SLA {res}: L={length}, sparse TFLOP {tflop:.2f}, TMA layout ok: {section['tma_supported']}",
          flush=True)

    ref = reference.sla_attention(q[:, REF_HEADS], k[:, REF_HEADS], v[:, REF_HEADS], w, b, TOPK, BLOCK_Q, BLOCK_K)
    section["ref_max_abs"] = ref.float().abs().max().item()
    dense_ms = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    rows.append({"variant": "dense SDPA bf16", "ms": dense_ms})
    # Side inputs of the default path, shared by every "sparse kernel alone" timing.
    lut, kv, ksum = sla_triton.side_inputs(q, k, v, TOPK, BLOCK_Q, BLOCK_K)
    default_out: torch.Tensor | None = None

    for label, kwargs in variants:
        row: dict[str, Any] = {"variant": label, "kwargs": kwargs}
        rows.append(row)
        side_kw, sparse_kw = split_kwargs(kwargs)
        try:
            def run(kwargs: dict[str, Any] = kwargs) -> torch.Tensor:
                return sla_triton.sla_attention(q, k, v, w, b, TOPK, BLOCK_Q, BLOCK_K, **kwargs)

            def sparse_only(sparse_kw: dict[str, Any] = sparse_kw) -> torch.Tensor:
                return sla_triton.sparse_forward(q, k, v, lut, kv, ksum, w, b, BLOCK_Q, BLOCK_K, **sparse_kw)

            out = run()
            if not _context_alive():  # an asynchronous launch error, attributed to this variant
                raise RuntimeError(f"CUDA error in the first run of {label}")
            row.update(accuracy(out, ref, default_out))
            if default_out is None:
                default_out = out
            row["ms"] = bench_ms(run)
            row["speedup_vs_dense"] = dense_ms / row["ms"]
            row["sparse_ms"] = bench_ms(sparse_only)
            row["sparse_TFLOP/s"] = tflop / (row["sparse_ms"] / 1e3)
            if side_kw:
                row["side_ms"] = bench_ms(lambda side_kw=side_kw: sla_triton.side_inputs(
                    q, k, v, TOPK, BLOCK_Q, BLOCK_K, **side_kw))
        except Exception as exc:  # a variant that does not build or run must not stop the rest
            row["error"] = repr(exc)[:300]
            row["traceback"] = traceback.format_exc()[-2000:]
            print(f"!! {label}: {row['error']}", flush=True)
            if not _context_alive():
                section["aborted"] = f"CUDA context died after {label!r}; rerun with --skip '{label}'"
                print("!!", section["aborted"], flush=True)
                write_json(JSON_NAME, results)
                return
        print(f"   {label}: {_summary(row)}", flush=True)
        write_json(JSON_NAME, results)

    # Same default kernel, contiguous (B, H, L, D) tensors: comparable with bench/kernels_micro.py.
    row = {"variant": "default, contiguous (B,H,L,D)"}
    try:
        row["ms"] = _contiguous_default_ms(q, k, v, w, b)
        row["speedup_vs_dense"] = dense_ms / row["ms"]
    except Exception as exc:
        row["error"] = repr(exc)[:300]
    rows.append(row)

    parts: dict[str, Callable[[], Any]] = {
        "block map, separate (pool q + pool k + score/topk/sort)": lambda: sla_triton.block_lut(
            q, k, TOPK, BLOCK_Q, BLOCK_K),
        "pool q alone": lambda: sla_triton.block_means(q, BLOCK_Q),
        "pool k alone": lambda: sla_triton.block_means(k, BLOCK_K),
        "kv reduction, default (fp32/tf32 dot)": lambda: sla_triton.linear_kv(k, v),
        "kv reduction + pool k fused (bf16 dot)": lambda: sla_triton.linear_kv_pool(k, v, BLOCK_K),
        "  same, 8 warps": lambda: sla_triton.linear_kv_pool(k, v, BLOCK_K, num_warps=8),
        "  same, 1024 rows per split": lambda: sla_triton.linear_kv_pool(k, v, BLOCK_K, rows_per_split=1024),
        "  same, 512 rows per split, 4 stages": lambda: sla_triton.linear_kv_pool(
            k, v, BLOCK_K, rows_per_split=512, num_stages=4),
        "  same, 4096 rows per split, 2 stages": lambda: sla_triton.linear_kv_pool(
            k, v, BLOCK_K, rows_per_split=4096, num_stages=2),
        "side inputs, separate": lambda: sla_triton.side_inputs(q, k, v, TOPK, BLOCK_Q, BLOCK_K, "separate"),
        "side inputs, fused": lambda: sla_triton.side_inputs(q, k, v, TOPK, BLOCK_Q, BLOCK_K, "fused"),
    }
    for name, fn in parts.items():
        try:
            section["parts"].append({"part": name, "ms": bench_ms(fn)})
        except Exception as exc:
            section["parts"].append({"part": name, "error": repr(exc)[:300]})
    write_json(JSON_NAME, results)
    print_table(rows, ["variant", "ms", "speedup_vs_dense", "sparse_ms", "sparse_TFLOP/s", "side_ms", "cosine",
                       "rel_err", "max_abs_err", "rel_vs_default", "ok", "error"])
    print_table(section["parts"], ["part", "ms", "error"])


def _contiguous_default_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
                           b: torch.Tensor) -> float:
    from turbokernels import sla_triton

    qc, kc, vc = (x.contiguous() for x in (q, k, v))  # freed on return
    return bench_ms(lambda: sla_triton.sla_attention(qc, kc, vc, w, b, TOPK, BLOCK_Q, BLOCK_K))


def _summary(row: dict[str, Any]) -> str:
    keys = ("ms", "sparse_ms", "cosine", "rel_vs_default", "ok", "error")
    return ", ".join(f"{k}={row[k]:.4g}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}"
                     for k in keys if k in row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", nargs="+", default=["720p", "480p"], choices=sorted(GRIDS))
    parser.add_argument("--only", nargs="+", help="run only variants whose label contains one of these")
    parser.add_argument("--skip", nargs="+", help="skip variants whose label contains one of these")
    args = parser.parse_args()
    variants = select_variants(args.only, args.skip)
    results: dict[str, Any] = {"environment": environment(), "variants": variants}
    print(results["environment"], flush=True)
    for res in args.res:
        try:
            sla_sweep(res, variants, results)
        except Exception:
            results[f"sla_{res}_error"] = traceback.format_exc()
            print(f"!! {res} failed:\n{traceback.format_exc()}", flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        write_json(JSON_NAME, results)
    print("\nwrote", write_json(JSON_NAME, results))


if __name__ == "__main__":
    main()
