"""Where one denoising step of the full-size A14B expert spends its GPU time (the fused fp8 + SLA path).

For each resolution: one warm forward, then one forward under torch.profiler. Reports the wall time, the sum of
kernel times (so the GPU's idle share: launch overhead or host syncs), kernel time per group (SLA, fp8 GEMMs,
norms/quantization, ...) and the top kernels. With --graph, also the same forward captured once in a CUDA graph and
replayed (what launch overhead would cost), its output compared to the eager one. Opt-in: measured on the H100,
capture stops at the SLA block map (its key-mean weights are set from a host scalar), and the idle time above
(1-2% of a 720p step) already bounds what graphs could save.

    python -m bench.profile_step [--res 480p 720p] [--layers 40] [--graph]

Prints tables and writes profile_step.json ($OUT or bench/results/).
"""

from __future__ import annotations

import argparse
import traceback
from collections import defaultdict
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import GRIDS, bench_ms, environment, print_table, rel_err, write_json
from bench.dit_step import build_dit, inputs
from inference.configs import A14B
from turbokernels import dispatch

# Kernel-name fragments -> group, first match wins (Triton kernels keep their Python names).
# cuBLAS names its Hopper GEMM kernels nvjet_*/sm90_xmma_* for fp8 and bf16 alike; in the fused fp8 model the
# block linears are fp8 and only the small fp32 block-map score product is not.
GROUPS = (
    ("sla sparse", ("_sla_sparse",)),
    ("sla side (kv, pooling)", ("_linear_kv", "_block_mean")),
    ("block map (score, topk, sort)", ("topk", "sort", "radix", "bitonic", "gatherTopK", "f32f32")),
    ("GEMMs (cuBLAS)", ("nvjet", "xmma_gemm", "gemm", "gemv", "cublas", "cutlass")),
    ("norms / quantize / residual / rope", ("_ln_", "_layer_norm", "_rms", "_residual", "_quant", "_gated", "_rope",
                                            "norm")),
    ("attention (cross, SDPA)", ("flash", "fmha", "attention", "sdpa")),
)


def group_of(name: str) -> str:
    low = name.lower()
    for group, fragments in GROUPS:
        if any(f.lower() in low for f in fragments):
            return group
    return "other (elementwise, copies)"


def kernel_times(prof: Any) -> dict[str, tuple[float, int]]:
    """Total device milliseconds and call count per kernel name."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals[event.name]
            entry[0] += event.time_range.elapsed_us() / 1000.0
            entry[1] += 1
    return {name: (ms, int(n)) for name, (ms, n) in totals.items()}


def profile_res(dit: torch.nn.Module, res: str, graph: bool, layers: int) -> dict[str, Any]:
    x, t, context = inputs(res)
    with torch.inference_mode():
        step_ms = bench_ms(lambda: dit(x, t, context), warmup=1, iters=3)
        eager_out = dit(x, t, context).float()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            dit(x, t, context)
            torch.cuda.synchronize()
    kernels = kernel_times(prof)
    kernel_ms = sum(ms for ms, _ in kernels.values())
    groups: dict[str, float] = defaultdict(float)
    for name, (ms, _) in kernels.items():
        groups[group_of(name)] += ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:25]
    row: dict[str, Any] = {
        "res": res, "step_ms": step_ms, "kernel_ms": kernel_ms, "idle_ms": step_ms - kernel_ms,
        "per_layer_ms": {g: ms / layers for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": n[:120], "ms": ms, "calls": c} for n, (ms, c) in top],
    }
    if graph:
        try:
            static = [a.clone() for a in (x, t, context)]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(stream):
                dit(*static)  # warm-up on the side stream, as torch.cuda.graph requires
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(g):
                graph_out = dit(*static)
            row["graph_ms"] = bench_ms(g.replay, warmup=1, iters=3)
            row["graph_rel_err_vs_eager"] = rel_err(graph_out, eager_out)
            del g, graph_out
        except Exception:
            row["graph_error"] = traceback.format_exc()[-2000:]
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", nargs="+", default=["480p", "720p"], choices=sorted(GRIDS))
    parser.add_argument("--layers", type=int, default=A14B.dit.num_layers)
    parser.add_argument("--graph", action="store_true", help="also capture and replay the step as a CUDA graph")
    args = parser.parse_args()
    results: dict[str, Any] = {"environment": environment(), "layers": args.layers, "rows": []}
    print(results["environment"])
    dit = build_dit(args.layers)
    dit.use_fp8_linears(fuse=True)
    torch.cuda.empty_cache()
    dispatch.set_backend("auto")
    for res in args.res:
        row = profile_res(dit, res, args.graph, args.layers)
        results["rows"].append(row)
        print(f"\n== {res}: step {row['step_ms']:.1f} ms, kernels {row['kernel_ms']:.1f} ms, "
              f"idle {row['idle_ms']:.1f} ms, graph {row.get('graph_ms', float('nan')):.1f} ms "
              f"(rel err vs eager {row.get('graph_rel_err_vs_eager')})")
        if "graph_error" in row:
            print(row["graph_error"])
        print_table([{"group": g, "ms/layer": ms} for g, ms in row["per_layer_ms"].items()], ["group", "ms/layer"])
        print_table(row["top_kernels"], ["ms", "calls", "name"])
        write_json("profile_step.json", results)
    print("wrote", write_json("profile_step.json", results))


if __name__ == "__main__":
    main()
