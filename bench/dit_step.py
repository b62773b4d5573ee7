"""One denoising step (one forward) of the full-size A14B DiT with random weights, on one GPU.

Modes, run in this order on one model (each later mode changes the model in place):
- dense_bf16:   the baseline: bf16 linears, dense PyTorch SDPA self-attention, reference norms/RoPE;
- sla_bf16:     SLA Triton kernel + Triton norms (dispatch "auto"), bf16 linears;
- sla_fp8_unfused: as sla_bf16 with the block linears in fp8, each quantizing its own input (the first fp8 path);
- sla_fp8:      fp8 with the fusions of WanDiT.use_fp8_linears: one q/k/v GEMM, norms writing fp8 rows, GELU fused
                into the quantization of the FFN's hidden activation;
- sla_fp8_pv8:  as sla_fp8 with SLA's P.V in e4m3 (WanDiT.use_fp8_pv);
- sla_fp8_lora64: as sla_fp8 with a random rank-64 LoRA on every block linear, applied unmerged the way a request's
                LoRA runs (inference.lora: a low-rank path beside each fp8 linear); its row gives the ratio to sla_fp8.

    python -m bench.dit_step [--res 480p 720p] [--layers 40] [--modes ...]

Prints a table and writes dit_step.json ($OUT or bench/results/).
"""

from __future__ import annotations

import argparse
import time
import traceback
from typing import Any

import torch

from bench.common import GRIDS, environment, print_table, rel_err, wall_s, write_json
from inference import lora
from inference.configs import A14B
from inference.dit import SelfAttention, WanDiT
from turbokernels import dispatch

MODES = ("dense_bf16", "sla_bf16", "sla_fp8_unfused", "sla_fp8", "sla_fp8_pv8", "sla_fp8_lora64")
LORA_RANK = 64


def build_dit(layers: int) -> WanDiT:
    """Random full-size expert, created directly on the GPU in bf16 (proj_l stays fp32 as in the model)."""
    cfg = A14B.dit
    if layers != cfg.num_layers:
        from dataclasses import replace

        cfg = replace(cfg, num_layers=layers)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            dit = WanDiT(cfg, attention="sla")
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for block in dit.blocks:  # non-zero modulation, so gates and shifts are exercised
            block.modulation.normal_(std=0.1)
    return dit.eval().requires_grad_(False)


def random_lora(layers: int, rank: int = LORA_RANK) -> dict[str, lora.LoraPair]:
    """A LoRA of `rank` on every block linear (self/cross q, k, v, o and both FFN layers), random, on the GPU."""
    cfg = A14B.dit
    shapes = {f"{branch}.{p}": (cfg.dim, cfg.dim) for branch in ("self_attn", "cross_attn") for p in "qkvo"}
    shapes |= {"ffn.0": (cfg.ffn_dim, cfg.dim), "ffn.2": (cfg.dim, cfg.ffn_dim)}
    gen = torch.Generator(device="cuda").manual_seed(1)
    pairs = {}
    for i in range(layers):
        for name, (out_f, in_f) in shapes.items():
            down = torch.randn(rank, in_f, device="cuda", generator=gen, dtype=torch.bfloat16) * in_f**-0.5
            up = torch.randn(out_f, rank, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.01
            pairs[f"blocks.{i}.{name}"] = lora.LoraPair(down=down, up=up, scale=1.0)
    return pairs


def set_dense(dit: WanDiT, dense: bool, saved: dict[int, Any]) -> None:
    for i, module in enumerate(m for m in dit.modules() if isinstance(m, SelfAttention)):
        if dense:
            saved[i] = module.attn_op
            module.attn_op = None
        elif i in saved:
            module.attn_op = saved[i]


def inputs(res: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f, h, w = GRIDS[res]
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1, 36, f, 2 * h, 2 * w, device="cuda", generator=gen)
    t = torch.tensor([993.78], device="cuda")
    context = torch.randn(1, 512, 4096, device="cuda", generator=gen, dtype=torch.bfloat16)
    return x, t, context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", nargs="+", default=["480p", "720p"], choices=sorted(GRIDS))
    parser.add_argument("--layers", type=int, default=A14B.dit.num_layers)
    parser.add_argument("--modes", nargs="+", default=list(MODES[:4]), choices=MODES)
    parser.add_argument("--iters", type=int, default=2)
    args = parser.parse_args()
    modes = list(args.modes)
    results: dict[str, Any] = {"environment": environment(), "layers": args.layers, "rows": []}
    print(results["environment"])
    t0 = time.perf_counter()
    dit = build_dit(args.layers)
    results["build_s"] = time.perf_counter() - t0
    results["weights_gib_bf16"] = sum(p.numel() * p.element_size() for p in dit.parameters()) / 2**30
    saved: dict[int, Any] = {}
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    for mode in modes:
        try:
            if mode == "dense_bf16":
                dispatch.set_backend("reference")
                set_dense(dit, True, saved)
            else:
                dispatch.set_backend("auto")
                set_dense(dit, False, saved)
            if mode.startswith("sla_fp8"):
                converted = dit.use_fp8_linears(fuse=mode != "sla_fp8_unfused")
                results["fp8_converted"] = results.get("fp8_converted", 0) + converted
                torch.cuda.empty_cache()
            dit.use_fp8_pv(mode == "sla_fp8_pv8")
            weights = sum(b.numel() * b.element_size() for b in list(dit.parameters()) + list(dit.buffers()))
            paths: dict[Any, Any] = {}
            if mode == "sla_fp8_lora64":
                t_build = time.perf_counter()
                paths = lora.build_paths(dit, [(random_lora(args.layers), 1.0)], torch.device("cuda"), torch.bfloat16)
                torch.cuda.synchronize()
                results["lora_build_s"] = time.perf_counter() - t_build
                results["lora_paths"] = len(paths)
            for res in args.res:
                x, t, context = inputs(res)
                torch.cuda.reset_peak_memory_stats()
                with torch.inference_mode(), lora.applied(paths):
                    first = wall_s(lambda x=x, t=t, context=context: dit(x, t, context))
                    times = []
                    for _ in range(args.iters):
                        times.append(wall_s(lambda x=x, t=t, context=context: dit(x, t, context)))
                    out = dit(x, t, context)
                row = {"mode": mode, "res": res, "tokens": x.shape[2] * x.shape[3] * x.shape[4] // 4,
                       "step_s": min(times), "first_call_s": first,
                       "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "weights_gib": weights / 2**30}
                base = outputs.get(("dense_bf16", res))
                if base is not None:
                    row["rel_err_vs_dense"] = rel_err(out, base)
                    dense_row = next(r for r in results["rows"] if r["mode"] == "dense_bf16" and r["res"] == res)
                    row["speedup"] = dense_row["step_s"] / row["step_s"]
                exact = outputs.get(("sla_fp8", res))
                if mode in ("sla_fp8_pv8", "sla_fp8_lora64") and exact is not None:
                    row["rel_err_vs_sla_fp8"] = rel_err(out, exact)  # what the fp8 P.V product / the LoRA change
                    fp8_row = next(r for r in results["rows"] if r["mode"] == "sla_fp8" and r["res"] == res)
                    row["ratio_vs_sla_fp8"] = row["step_s"] / fp8_row["step_s"]
                outputs[(mode, res)] = out.float()
                results["rows"].append(row)
                print(row, flush=True)
                write_json("dit_step.json", results)
                del x, context, out
        except Exception:
            results[f"{mode}_error"] = traceback.format_exc()
            print(f"!! {mode} failed:\n{traceback.format_exc()}", flush=True)
        finally:
            dispatch.set_backend(None)
    print()
    print_table(results["rows"], ["mode", "res", "tokens", "step_s", "first_call_s", "speedup", "rel_err_vs_dense",
                                  "rel_err_vs_sla_fp8", "ratio_vs_sla_fp8", "peak_gib", "weights_gib"])
    print("wrote", write_json("dit_step.json", results))


if __name__ == "__main__":
    main()
