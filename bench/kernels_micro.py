"""Micro benchmarks at A14B shapes (81 frames, 480p and 720p): SLA vs dense SDPA (with accuracy vs the reference),
the eight block linears (bf16 cuBLAS vs int8 W8A8 Triton vs fp8 row-scaled cuBLASLt), norms and RoPE.

    python -m bench.kernels_micro [--res 480p 720p] [--sections sla linears gemm block norms rows] [--no-compile]

"block" times one block's fp8 linears with its norms and residual adds (attention left out): the first fp8 path
against the fused one (q/k/v in one GEMM, quantization inside the norm and GELU kernels, residual adds fused into
the norms). "rows" times the row kernels (norms, quantizers, RMSNorm+RoPE) under each number of warps.

Prints tables and writes kernels_micro.json ($OUT or bench/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import traceback
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import GRIDS, bench_ms, cosine, environment, print_table, rel_err, write_json
from turbokernels import fp8_linear, int8_linear, norms_triton, reference, sla_triton

HEADS, HEAD_DIM, DIM, FFN = 40, 128, 5120, 13824
# (name, out_features, in_features, count): self q,k,v,o and cross q,o at dim x dim, the FFN pair.
LINEARS = [("dim x dim (x6)", DIM, DIM, 6), ("ffn up", FFN, DIM, 1), ("ffn down", DIM, FFN, 1)]
SLA_VARIANTS = [  # (block_m, blocks_per_iter, num_warps, num_stages); H100 run 1: (128, 2, 8, 2) best of 6
    (128, 2, 8, 2), (128, 2, 8, 3), (128, 2, 8, 1), (64, 2, 4, 2), (64, 2, 4, 3), (64, 1, 4, 3), (128, 4, 8, 2),
]


def sla_section(res: str, results: dict[str, Any]) -> None:
    length = math.prod(GRIDS[res])
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(3))
    w = torch.randn(HEAD_DIM, HEAD_DIM, device="cuda", generator=gen) * 0.05
    b = torch.randn(HEAD_DIM, device="cuda", generator=gen) * 0.05
    topk, bq, bk = 0.1, 128, 64
    out = sla_triton.sla_attention(q, k, v, w, b, topk, bq, bk)
    # The reference keeps a token-level mask; on a few heads (the block map is per head, so this is exact).
    heads = [0, 17, 39]
    ref = reference.sla_attention(q[:, heads], k[:, heads], v[:, heads], w, b, topk, bq, bk)
    acc = {"heads_checked": heads, "cosine": cosine(out[:, heads], ref), "rel_err": rel_err(out[:, heads], ref),
           "max_abs_err": (out[:, heads].float() - ref.float()).abs().max().item(),
           "ref_max_abs": ref.float().abs().max().item()}
    unfused = sla_triton.sla_attention(q, k, v, w, b, topk, bq, bk, fuse_linear=False)
    acc["fused_vs_unfused_rel"] = rel_err(out, unfused)
    del ref, unfused
    rows = []
    dense_ms = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    rows.append({"op": "dense SDPA bf16", "ms": dense_ms})
    for bm, bpi, warps, stages in SLA_VARIANTS:
        label = f"SLA m={bm} bpi={bpi} w={warps} s={stages}"
        try:
            ms = bench_ms(lambda bm=bm, bpi=bpi, warps=warps, stages=stages: sla_triton.sla_attention(
                q, k, v, w, b, topk, bq, bk, block_m=bm, blocks_per_iter=bpi, num_warps=warps, num_stages=stages))
            rows.append({"op": label, "ms": ms, "speedup": dense_ms / ms})
        except Exception as exc:  # a config that does not compile must not stop the rest
            rows.append({"op": label, "error": repr(exc)[:200]})
    rows.append({"op": "  part: block map (pool+score+topk+sort)",
                 "ms": bench_ms(lambda: sla_triton.block_lut(q, k, topk, bq, bk))})
    rows.append({"op": "  part: linear kv reduction", "ms": bench_ms(lambda: sla_triton.linear_kv(k, v))})
    n_sel = int(topk * math.ceil(length / bk))
    flops = 4 * HEADS * length * n_sel * bk * HEAD_DIM
    results[f"sla_{res}"] = {"length": length, "accuracy": acc, "timings": rows, "sparse_flops": flops}
    print(f"\n== SLA {res} (L={length}, topk {topk}): cosine {acc['cosine']:.6f}, rel {acc['rel_err']:.2e}, "
          f"max abs {acc['max_abs_err']:.3e} (ref max {acc['ref_max_abs']:.2f}); sparse GFLOP {flops / 1e9:.0f}")
    print_table(rows, ["op", "ms", "speedup", "error"])


def linears_section(res: str, results: dict[str, Any]) -> None:
    m = math.prod(GRIDS[res])
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows = []
    totals = {"bf16": 0.0, "int8": 0.0, "fp8": 0.0, "int8 gemm only": 0.0, "fp8 gemm only": 0.0}
    for name, n, k_in, count in LINEARS:
        x = torch.randn(m, k_in, device="cuda", dtype=torch.bfloat16, generator=gen)
        lin = torch.nn.Linear(k_in, n, device="cuda", dtype=torch.bfloat16)
        torch.nn.init.normal_(lin.weight, std=k_in**-0.5, generator=gen)
        exact = torch.addmm(lin.bias.float(), x.float(), lin.weight.float().t())
        qw, sw = int8_linear.quantize_int8_blockwise(lin.weight)
        fp8 = fp8_linear.Fp8Linear.from_linear(lin)
        qx, sx = int8_linear.quantize_int8_blockwise(x)
        fx, fsx = fp8_linear.quantize_rows_fp8(x)
        cand = {
            "bf16": lambda x=x, lin=lin: lin(x),
            "int8": lambda x=x, qw=qw, sw=sw, lin=lin: int8_linear.int8_linear(x, qw, sw, lin.bias),
            "fp8": lambda x=x, fp8=fp8: fp8(x),
            "int8 gemm only": lambda qx=qx, sx=sx, qw=qw, sw=sw, lin=lin: int8_linear.int8_gemm(
                qx, sx, qw, sw, lin.bias, torch.bfloat16),
            "fp8 gemm only": lambda fx=fx, fsx=fsx, fp8=fp8: torch._scaled_mm(
                fx, fp8.weight_fp8.t(), scale_a=fsx, scale_b=fp8.weight_scale, bias=fp8.bias,
                out_dtype=torch.bfloat16),
        }
        for label, fn in cand.items():
            ms = bench_ms(fn)
            err = rel_err(fn(), exact) if label in ("bf16", "int8", "fp8") else None
            tflops = 2 * m * n * k_in / ms / 1e9
            rows.append({"linear": name, "kind": label, "ms": ms, "TFLOP/s": tflops, "rel_err_vs_fp32": err})
            totals[label] += ms * count
        if name.startswith("dim x dim") and res == "720p":
            for i, cfg in enumerate(int8_linear.GEMM_CONFIGS):
                try:
                    ms = bench_ms(lambda qx=qx, sx=sx, qw=qw, sw=sw, cfg=cfg: int8_linear.int8_gemm(
                        qx, sx, qw, sw, None, torch.bfloat16, cfg))
                    rows.append({"linear": name, "kind": f"int8 gemm cfg{i}", "ms": ms,
                                 "TFLOP/s": 2 * m * n * k_in / ms / 1e9})
                except Exception as exc:
                    rows.append({"linear": name, "kind": f"int8 gemm cfg{i}", "error": repr(exc)[:200]})
        del x, lin, exact, qw, sw, fp8, qx, sx, fx, fsx
        torch.cuda.empty_cache()
    for label, total in totals.items():
        rows.append({"linear": "EIGHT LINEARS", "kind": label, "ms": total, "speedup": totals["bf16"] / total})
    results[f"linears_{res}"] = {"tokens": m, "rows": rows}
    print(f"\n== eight block linears {res} (M={m})")
    print_table(rows, ["linear", "kind", "ms", "TFLOP/s", "rel_err_vs_fp32", "speedup", "error"])


def _block_linear_work(m: int, gen: torch.Generator) -> tuple[Any, Any, dict[str, Any]]:
    """One A14B block without its two attentions, in fp8 two ways: each linear quantizing its own input with eager
    residual adds and bf16 norms (the first fp8 path), and the fused path of WanDiT.use_fp8_linears."""
    from turbokernels import dispatch

    def fp8_of(n: int, k_in: int) -> fp8_linear.Fp8Linear:
        lin = torch.nn.Linear(k_in, n, device="cuda", dtype=torch.bfloat16)
        torch.nn.init.normal_(lin.weight, std=k_in**-0.5, generator=gen)
        return fp8_linear.Fp8Linear.from_linear(lin)

    q, k, v, o, cq, co = (fp8_of(DIM, DIM) for _ in range(6))
    up, down = fp8_of(FFN, DIM), fp8_of(DIM, FFN)
    qkv = fp8_linear.fuse_fp8_linears([q, k, v])
    x = torch.randn(1, m, DIM, device="cuda", generator=gen)
    attn = torch.randn(1, m, DIM, device="cuda", generator=gen, dtype=torch.bfloat16)  # stands in for attention
    mod = [torch.randn(1, 1, DIM, device="cuda", generator=gen) * 0.1 for _ in range(6)]
    eps, bf16 = 1e-6, torch.bfloat16

    def unfused() -> torch.Tensor:
        h = dispatch.layer_norm_modulate(x, mod[0], mod[1], eps, out_dtype=bf16)
        q(h), k(h), v(h)
        x1 = x + o(attn).float() * mod[2]
        h = dispatch.layer_norm_modulate(x1, mod[3], mod[4], eps).to(bf16)
        cq(h)
        x2 = x1 + co(attn).float()
        h = dispatch.layer_norm_modulate(x2, mod[3], mod[4], eps, out_dtype=bf16)
        return x2 + down(torch.nn.functional.gelu(up(h), approximate="tanh")).float() * mod[5]

    def fused() -> torch.Tensor:
        h = dispatch.layer_norm_modulate_fp8(x, mod[0], mod[1], eps, bf16)
        qkv(h)
        x1, h = dispatch.residual_norm(x, o(attn), mod[2], mod[3], mod[4], eps, bf16, fp8=True)
        cq(h)
        x2, h = dispatch.residual_norm(x1, co(attn), None, mod[3], mod[4], eps, bf16, fp8=True)
        return dispatch.gated_residual(x2, down(fp8_linear.quantize_activation(up(h), gelu=True)), mod[5])

    return unfused, fused, {"flops": 2 * m * DIM * (8 * DIM + 2 * FFN)}


# (label, scaling, use_fast_accum) of torch._scaled_mm; "row" is what Fp8Linear does.
GEMM_OPTIONS = [("fp8 row scales", "row", False), ("fp8 row scales, fast accum", "row", True),
                ("fp8 tensor scales", "tensor", False), ("fp8 tensor scales, fast accum", "tensor", True)]


def gemm_section(res: str, results: dict[str, Any]) -> None:
    """The fp8 GEMM alone under torch._scaled_mm's options, at the block's three GEMM shapes, against bf16."""
    m = math.prod(GRIDS[res])
    gen = torch.Generator(device="cuda").manual_seed(4)
    rows = []
    for name, n, k_in in (("qkv", 3 * DIM, DIM), ("ffn up", FFN, DIM), ("ffn down", DIM, FFN)):
        x = torch.randn(m, k_in, device="cuda", dtype=torch.bfloat16, generator=gen)
        w = torch.randn(n, k_in, device="cuda", dtype=torch.bfloat16, generator=gen) * k_in**-0.5
        exact = x.float() @ w.float().t()
        qx, sx = fp8_linear.quantize_rows_fp8(x)
        qw, sw = fp8_linear.quantize_rows_fp8(w)
        flop = 2 * m * n * k_in
        ms = bench_ms(lambda x=x, w=w: x @ w.t())
        rows.append({"gemm": name, "kind": "bf16", "ms": ms, "TFLOP/s": flop / ms / 1e9,
                     "rel_err_vs_fp32": rel_err(x @ w.t(), exact)})
        base = ms
        for label, scaling, fast in GEMM_OPTIONS:
            if scaling == "row":
                sa, sb = sx, sw.view(1, -1)
            else:  # one scale per tensor: the largest row scale, so nothing overflows
                sa, sb = sx.max().view(()), sw.max().view(())
                qx_t = (qx.float() * sx / sa).to(fp8_linear.FP8_DTYPE)
                qw_t = (qw.float() * sw / sb).to(fp8_linear.FP8_DTYPE)
            a, b = (qx, qw) if scaling == "row" else (qx_t, qw_t)

            def run(a=a, b=b, sa=sa, sb=sb, fast=fast) -> torch.Tensor:
                return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                        use_fast_accum=fast)
            try:
                ms = bench_ms(run)
                rows.append({"gemm": name, "kind": label, "ms": ms, "TFLOP/s": flop / ms / 1e9,
                             "speedup": base / ms, "rel_err_vs_fp32": rel_err(run(), exact)})
            except Exception as exc:
                rows.append({"gemm": name, "kind": label, "error": repr(exc)[:200]})
        del x, w, exact, qx, sx, qw, sw
        torch.cuda.empty_cache()
    results[f"gemm_{res}"] = {"tokens": m, "rows": rows}
    print(f"\n== fp8 GEMM options {res} (M={m})")
    print_table(rows, ["gemm", "kind", "ms", "TFLOP/s", "speedup", "rel_err_vs_fp32", "error"])


def block_linears_section(res: str, results: dict[str, Any]) -> None:
    m = math.prod(GRIDS[res])
    gen = torch.Generator(device="cuda").manual_seed(3)
    unfused, fused, facts = _block_linear_work(m, gen)
    rows = []
    for label, fn in (("fp8 per-linear quantization, eager residuals", unfused), ("fp8 fused", fused)):
        ms = bench_ms(fn)
        rows.append({"path": label, "ms": ms, "TFLOP/s": facts["flops"] / ms / 1e9})
    rows[1]["speedup"] = rows[0]["ms"] / rows[1]["ms"]
    rows.append({"path": "rel. difference of the block outputs", "rel_err": rel_err(fused(), unfused())})
    results[f"block_linears_{res}"] = {"tokens": m, "rows": rows}
    print(f"\n== one block's linears, norms and residual adds (no attention), fp8, {res} (M={m})")
    print_table(rows, ["path", "ms", "TFLOP/s", "speedup", "rel_err"])


def norms_section(res: str, results: dict[str, Any], use_compile: bool) -> None:
    length = math.prod(GRIDS[res])
    gen = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(1, length, DIM, device="cuda", generator=gen)
    shift = torch.randn(1, 1, DIM, device="cuda", generator=gen)
    scale = torch.randn(1, 1, DIM, device="cuda", generator=gen) * 0.1
    xb = torch.randn(1, length, DIM, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = torch.rand(DIM, device="cuda", generator=gen) + 0.5
    cos, sin = (t.cuda() for t in reference.rope_tables(GRIDS[res], HEAD_DIM, 10000.0))
    xh = xb.view(1, length, HEADS, HEAD_DIM)

    def ln_ref() -> torch.Tensor:
        return reference.layer_norm_modulate(x, shift, scale, 1e-6).to(torch.bfloat16)

    def rms_rope_ref() -> torch.Tensor:
        return reference.apply_rope(reference.rms_norm(xb, w, 1e-6).view(1, length, HEADS, HEAD_DIM), cos, sin)

    cases = {
        "ln+modulate fp32->bf16": (ln_ref, lambda: norms_triton.layer_norm_modulate(
            x, shift, scale, 1e-6, out_dtype=torch.bfloat16)),
        "rms_norm bf16": (lambda: reference.rms_norm(xb, w, 1e-6), lambda: norms_triton.rms_norm(xb, w, 1e-6)),
        "rope bf16": (lambda: reference.apply_rope(xh, cos, sin), lambda: norms_triton.apply_rope(xh, cos, sin)),
        "rms_norm+rope bf16": (rms_rope_ref, lambda: norms_triton.rms_norm_rope(xb, w, 1e-6, cos, sin, HEADS)),
    }
    rows = []
    for name, (ref_fn, ours_fn) in cases.items():
        ref_ms = bench_ms(ref_fn)
        ours_ms = bench_ms(ours_fn)
        row = {"op": name, "reference_ms": ref_ms, "ours_ms": ours_ms, "speedup": ref_ms / ours_ms,
               "rel_err": rel_err(ours_fn(), ref_fn())}
        if use_compile and name in ("ln+modulate fp32->bf16", "rms_norm+rope bf16"):
            try:
                compiled = torch.compile(ref_fn, dynamic=False)
                row["compile_ms"] = bench_ms(compiled)
            except Exception as exc:
                row["error"] = repr(exc)[:200]
        rows.append(row)
    results[f"norms_{res}"] = {"tokens": length, "rows": rows}
    print(f"\n== norms / RoPE {res} (L={length})")
    print_table(rows, ["op", "reference_ms", "compile_ms", "ours_ms", "speedup", "rel_err", "error"])


@contextlib.contextmanager
def forced_row_warps(warps: int) -> Iterator[None]:
    """Every row kernel launched inside runs with `warps` warps (both modules look row_warps up at launch)."""
    saved = norms_triton.row_warps
    norms_triton.row_warps = fp8_linear.row_warps = lambda block, kind="plain": warps  # type: ignore[assignment]
    try:
        yield
    finally:
        norms_triton.row_warps = fp8_linear.row_warps = saved  # type: ignore[assignment]


def row_warps_section(res: str, results: dict[str, Any]) -> None:
    """The row kernels of the fused fp8 block at the model's widths under each warp count: the baseline is
    row_warps' plain choice, the shipped one is what row_warps gives their kind (bandwidth from the bytes each
    element moves)."""
    length = math.prod(GRIDS[res])
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, length, DIM, device="cuda", generator=gen)
    y = torch.randn(1, length, DIM, device="cuda", generator=gen, dtype=torch.bfloat16)
    gate, shift, scale = (torch.randn(1, 1, DIM, device="cuda", generator=gen) for _ in range(3))
    hidden = torch.randn(length, FFN, device="cuda", generator=gen, dtype=torch.bfloat16)
    qkv = torch.randn(1, length, 3 * DIM, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = torch.rand(DIM, device="cuda", generator=gen) + 0.5
    cos, sin = (t.cuda() for t in reference.rope_tables(GRIDS[res], HEAD_DIM, 10000.0))
    fp8 = torch.float8_e4m3fn
    # (name, kind, row width, bytes moved per element, launch)
    cases: list[tuple[str, str, int, int, Any]] = [
        ("residual LayerNorm+mod -> fp8", "layernorm", DIM, 11,
         lambda: norms_triton.residual_layer_norm_modulate(x, y, gate, shift, scale, 1e-6, fp8)),
        ("LayerNorm+mod -> fp8", "layernorm", DIM, 5, lambda: norms_triton.layer_norm_modulate_fp8(
            x, shift, scale, 1e-6)),
        ("GELU + fp8 quantize", "gelu", FFN, 3, lambda: fp8_linear.quantize_rows_fp8(hidden, gelu=True)),
        ("fp8 quantize", "plain", DIM, 3, lambda: fp8_linear.quantize_rows_fp8(hidden[:, :DIM])),
        ("RMSNorm+RoPE (q of fused qkv)", "plain", DIM, 4, lambda: norms_triton.rms_norm_rope(
            qkv[:, :, :DIM], w, 1e-6, cos, sin, HEADS)),
    ]
    rows = []
    for name, kind, width, nbytes, launch in cases:
        block = 1 << (width - 1).bit_length()
        shipped, baseline = norms_triton.row_warps(block, kind), norms_triton.row_warps(block)
        base_ms = None
        for warps in sorted({2, 4, 8, 16, 32, shipped, baseline}):
            with forced_row_warps(warps):
                ms = bench_ms(launch)
            row = {"kernel": name, "warps": warps, "ms": ms, "GB/s": length * width * nbytes / ms / 1e6,
                   "shipped": warps == shipped, "baseline": warps == baseline}
            rows.append(row)
            base_ms = ms if warps == baseline else base_ms
        for row in rows[-len({2, 4, 8, 16, 32, shipped, baseline}):]:
            row["vs_baseline"] = base_ms / row["ms"]
    results[f"row_warps_{res}"] = {"tokens": length, "rows": rows}
    print(f"\n== row kernels by warps {res} (L={length})")
    print_table(rows, ["kernel", "warps", "ms", "GB/s", "vs_baseline", "shipped", "baseline"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", nargs="+", default=["480p", "720p"], choices=sorted(GRIDS))
    parser.add_argument("--sections", nargs="+", default=["sla", "linears", "block", "norms"])
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"environment": environment()}
    print(results["environment"])
    for res in args.res:
        for section in args.sections:
            try:
                if section == "sla":
                    sla_section(res, results)
                elif section == "linears":
                    linears_section(res, results)
                elif section == "gemm":
                    gemm_section(res, results)
                elif section == "block":
                    block_linears_section(res, results)
                elif section == "norms":
                    norms_section(res, results, not args.no_compile)
                elif section == "rows":
                    row_warps_section(res, results)
            except Exception:
                results[f"{section}_{res}_error"] = traceback.format_exc()
                print(f"!! {section} {res} failed:\n{traceback.format_exc()}")
            torch.cuda.empty_cache()
            write_json("kernels_micro.json", results)
    print("\nwrote", write_json("kernels_micro.json", results))


if __name__ == "__main__":
    main()
