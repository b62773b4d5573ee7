"""Wan2.1 VAE (full size, random weights, bf16 on one GPU): encode of an 81-frame I2V conditioning video (the image
then black frames, as the pipeline builds it) and decode of 21 latent frames, for each speed variant.

Variants (inference.vae.VAEOptions; chunk sizes are `chunk_latents` of encode / decode), run in the order given
on one model; the first is the baseline every other output is compared with (reference, the default list's
first, is the code as first written):
- reference:        REFERENCE_OPTIONS, chunks 1/1 (the code as it was: F.pad + cat, contiguous, cuDNN heuristics);
- cudnn_benchmark:  only cuDNN autotuning on;
- exact:            autotuning + channels_last_3d + fewer copies, eager norms (same math as reference);
- default_chunk1:   VAEOptions() (exact + the Triton RMSNorm+SiLU written into the conv buffers), chunks 1/1;
- no_steady:        VAEOptions() without computing the encode's repeated (black-tail) output frames once;
- no_matmul_attention: VAEOptions() with PyTorch's SDPA for the mid-block attention instead of cuBLAS + Triton;
- default:          VAEOptions() with the pipeline's chunks (VAE_CHUNK_LATENTS latent frames);
- no_benchmark:     default without cuDNN autotuning (cuDNN's heuristics pick each algorithm); run it in a process
                    of its own, as PyTorch caches the tuned plans without the autotuning flag in their key;
- default_chunk3/4: VAEOptions() with 3 / 4 latent frames a chunk (fewer, bigger convolutions; more memory);
- contiguous_fused: VAEOptions() in the contiguous layout (the fallback if channels_last_3d convs were slower).

    python3 -m bench.vae_speed [--res 720p 480p] [--variants ...] [--runs 2] [--convs]

--convs first times the decoder's three big 3x3x3 convolutions at 720p (one 2-latent chunk: 8 output frames) in
other forms of the same product, to see how far cuDNN's conv3d is from the matrix units' rate: conv3d bf16 and
fp16 (channels_last_3d), conv2d over the three time taps stacked as input channels (the same sums, K = 27 C),
and conv2d with the taps stacked as output channels (N = 3 C) plus the shifted sum of the three partial outputs.

Per variant and resolution: the first call's seconds (includes cuDNN autotuning for a new shape), the median of
`--runs` later calls, the peak memory of the last call above what was allocated before it, and the relative error
(Frobenius) of the output against the reference variant's; at --fp32-res resolutions (default 480p) also against
the reference path run in fp32 without TF32 (err_vs_fp32: the bf16 noise floor is the reference row's value).
A failing variant is recorded and skipped.
Prints a table and writes vae_speed.json ($OUT or bench/results/).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import bench_ms, environment, print_table, rel_err, wall_s, write_json
from inference.configs import A14B, VAEConfig
from inference.pipeline import VAE_CHUNK_LATENTS
from inference.vae import REFERENCE_OPTIONS, VAEOptions, WanVAE, build_vae

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720)}
FRAMES = 81
# Output frames of one decode chunk (2 latents) in --convs.
CHUNK_FRAMES = 8

# name -> (options, encode chunk_latents, decode chunk_latents)
VARIANTS: dict[str, tuple[VAEOptions, int, int]] = {
    "reference": (REFERENCE_OPTIONS, 1, 1),
    "cudnn_benchmark": (
        VAEOptions(channels_last=False, fewer_copies=False, fused_norm=False, matmul_attention=False), 1, 1),
    "exact": (VAEOptions(fused_norm=False, matmul_attention=False), 1, 1),
    "default_chunk1": (VAEOptions(), 1, 1),
    "no_steady": (VAEOptions(steady_frames=False), VAE_CHUNK_LATENTS, VAE_CHUNK_LATENTS),
    "no_matmul_attention": (VAEOptions(matmul_attention=False), VAE_CHUNK_LATENTS, VAE_CHUNK_LATENTS),
    "default": (VAEOptions(), VAE_CHUNK_LATENTS, VAE_CHUNK_LATENTS),
    "no_benchmark": (VAEOptions(cudnn_benchmark=False), VAE_CHUNK_LATENTS, VAE_CHUNK_LATENTS),
    "default_chunk3": (VAEOptions(), 3, 3),
    "default_chunk4": (VAEOptions(), 4, 4),
    "contiguous_fused": (VAEOptions(channels_last=False), 1, 1),
}


def _measure(fn: Callable[[], torch.Tensor], runs: int) -> tuple[torch.Tensor, dict[str, float]]:
    """First call (cold), then `runs` timed calls; the last one's peak memory above the memory before it."""
    out: list[torch.Tensor] = []

    def call() -> None:
        out.append(fn())

    first = wall_s(call)
    times = []
    for _ in range(runs):
        out.clear()  # the previous output is not part of the next call's memory
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times.append(wall_s(call))
    peak = torch.cuda.max_memory_allocated() - before
    return out.pop(), {"first_s": first, "median_s": statistics.median(times), "peak_gib": peak / 2**30}


def conv_forms() -> list[dict[str, Any]]:
    """The decoder's big 3x3x3 convs at 720p, one chunk of 8 output frames (10 input frames with the causal
    context), in forms that compute the same sums; TFLOP/s counts the conv's own 2*27*C*C*8*H*W."""
    rows: list[dict[str, Any]] = []
    torch.backends.cudnn.benchmark = True
    cl3, cl2 = torch.channels_last_3d, torch.channels_last
    for c, h, w in ((96, 720, 1280), (192, 360, 640), (384, 180, 320)):
        flops = 2 * 27 * c * c * CHUNK_FRAMES * h * w
        x = torch.randn(1, c, CHUNK_FRAMES + 2, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl3)
        w3 = (torch.randn(c, c, 3, 3, 3, device="cuda", dtype=torch.bfloat16) / (27 * c) ** 0.5).contiguous(
            memory_format=cl3)
        ref = F.conv3d(x, w3, padding=(0, 1, 1)).float()
        forms: dict[str, Callable[[], torch.Tensor]] = {}
        forms["conv3d_bf16"] = lambda x=x, w3=w3: F.conv3d(x, w3, padding=(0, 1, 1))
        xh, wh = x.half(), w3.half()
        forms["conv3d_fp16"] = lambda xh=xh, wh=wh: F.conv3d(xh, wh, padding=(0, 1, 1))
        # Time taps as input channels: frame t's input is [x_t, x_t+1, x_t+2] stacked on C (built once, timed apart).
        frames = x[0].permute(1, 0, 2, 3)  # [T+2, C, H, W], channels_last view
        stacked = torch.cat([frames[k : k + CHUNK_FRAMES] for k in range(3)], dim=1).contiguous(memory_format=cl2)
        w27 = w3.permute(0, 2, 1, 3, 4).reshape(c, 3 * c, 3, 3).contiguous(memory_format=cl2)
        forms["conv2d_taps_in"] = lambda s=stacked, w27=w27: F.conv2d(s, w27, padding=1)
        forms["stack_taps_in_copy"] = lambda frames=frames: torch.cat(
            [frames[k : k + CHUNK_FRAMES] for k in range(3)], dim=1).contiguous(memory_format=cl2)
        # Time taps as output channels, then out_t = y0[t] + y1[t+1] + y2[t+2].
        w_out = w3.permute(2, 0, 1, 3, 4).reshape(3 * c, c, 3, 3).contiguous(memory_format=cl2)
        frames_cl = frames.contiguous(memory_format=cl2)

        def taps_out(f: torch.Tensor = frames_cl, wo: torch.Tensor = w_out, c: int = c) -> torch.Tensor:
            y = F.conv2d(f, wo, padding=1)
            return y[:CHUNK_FRAMES, :c] + y[1 : CHUNK_FRAMES + 1, c : 2 * c] + y[2 : CHUNK_FRAMES + 2, 2 * c :]

        forms["conv2d_taps_out_sum"] = taps_out
        for name, fn in forms.items():
            row: dict[str, Any] = {"channels": c, "size": f"{w}x{h}", "form": name}
            try:
                ms = bench_ms(fn, warmup=3, iters=10)
                row["ms"] = ms
                if name != "stack_taps_in_copy":
                    out = fn()
                    out = out.permute(1, 0, 2, 3).unsqueeze(0) if out.ndim == 4 else out
                    row["tflops"] = flops / ms / 1e9
                    row["rel_err"] = rel_err(out.float(), ref)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:200]
            rows.append(row)
            print(row, flush=True)
        del x, xh, stacked, frames_cl, forms
        torch.cuda.empty_cache()
    return rows


def profile_ops(vae: WanVAE, res: str) -> dict[str, Any]:
    """One encode and one decode (default options, pipeline chunks) under torch.profiler: wall seconds, summed
    kernel milliseconds and the 15 kernels with the most device time (names cut to 90 characters)."""
    from torch.profiler import ProfilerActivity, profile

    from bench.profile_step import kernel_times

    width, height = RESOLUTIONS[res]
    video = torch.zeros(1, 3, FRAMES, height, width, device="cuda", dtype=torch.bfloat16)
    video[:, :, 0] = torch.rand(1, 3, height, width, device="cuda") * 2 - 1
    z = torch.randn(1, vae.config.z_dim, vae.latent_frames(FRAMES), height // 8, width // 8, device="cuda")
    z = z.bfloat16()
    vae.options = VAEOptions()
    result: dict[str, Any] = {}
    for op, fn in (("encode", lambda: vae.encode(video, chunk_latents=VAE_CHUNK_LATENTS)),
                   ("decode", lambda: vae.decode(z, chunk_latents=VAE_CHUNK_LATENTS))):  # fmt: skip
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            seconds = wall_s(fn)
        kernels = kernel_times(prof)
        top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:15]
        result[op] = {
            "wall_s": seconds,
            "kernel_ms": sum(ms for ms, _ in kernels.values()),
            "top": [{"kernel": name[:90], "ms": ms, "calls": n} for name, (ms, n) in top],
        }
        print(f"{res} {op}: wall {seconds:.3f} s, kernels {result[op]['kernel_ms']:.0f} ms", flush=True)
        for row in result[op]["top"]:
            print(f"  {row['ms']:8.1f} ms {row['calls']:5d}  {row['kernel']}")
    return result


def fp32_outputs(config: VAEConfig, video: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference path in true fp32 (no TF32) on the same (seeded) weights: the yardstick for bf16 noise."""
    vae = build_vae(config).to(device=video.device).eval().requires_grad_(False)
    vae.options = REFERENCE_OPTIONS
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return {"encode": vae.encode(video.float()), "decode": vae.decode(z.float())}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def bench_resolution(
    vae: WanVAE,
    res: str,
    variants: list[str],
    runs: int,
    size: tuple[int, int] | None = None,
    fp32_check: bool = False,
) -> list[dict[str, Any]]:
    width, height = size or RESOLUTIONS[res]
    gen = torch.Generator(device="cuda").manual_seed(0)
    # The pipeline's I2V conditioning: the image in [-1, 1] as frame 0, then black (zero) frames.
    video = torch.zeros(1, 3, FRAMES, height, width, device="cuda", dtype=torch.bfloat16)
    video[:, :, 0] = torch.rand(1, 3, height, width, generator=gen, device="cuda").mul(2).sub(1)
    latent_frames = vae.latent_frames(FRAMES)
    z = torch.randn(1, vae.config.z_dim, latent_frames, height // 8, width // 8, generator=gen, device="cuda")
    z = z.to(torch.bfloat16)
    baseline: dict[str, torch.Tensor] = {}
    kept: list[tuple[dict[str, Any], torch.Tensor]] = []  # for the fp32 comparison
    rows: list[dict[str, Any]] = []
    for name in variants:
        options, enc_chunk, dec_chunk = VARIANTS[name]
        vae.options = options
        for op in ("encode", "decode"):
            row: dict[str, Any] = {"res": res, "variant": name, "op": op,
                                   "chunk": enc_chunk if op == "encode" else dec_chunk}  # fmt: skip
            try:
                if op == "encode":
                    out, stats = _measure(functools.partial(vae.encode, video, chunk_latents=enc_chunk), runs)
                else:
                    out, stats = _measure(functools.partial(vae.decode, z, chunk_latents=dec_chunk), runs)
                row.update(stats)
                if name == variants[0]:
                    baseline[op] = out
                    row["rel_err"] = 0.0
                elif op in baseline:
                    row["rel_err"] = rel_err(out, baseline[op])
                    row["max_abs_err"] = (out.float() - baseline[op].float()).abs().max().item()
                    row["speedup"] = next(
                        r["median_s"] for r in rows if r["variant"] == variants[0] and r["op"] == op
                    ) / stats["median_s"]
                if fp32_check:
                    kept.append((row, out))
                del out
            except Exception as exc:  # a failing variant must not cost the others their numbers
                traceback.print_exc()
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            torch.cuda.empty_cache()
            print({k: v for k, v in row.items()}, flush=True)
    vae.options = VAEOptions()
    if fp32_check:
        try:
            reference = fp32_outputs(vae.config, video, z)
            for row, out in kept:
                row["err_vs_fp32"] = rel_err(out, reference[row["op"]])
        except Exception as exc:
            traceback.print_exc()
            print(f"fp32 check failed: {type(exc).__name__}: {exc}")
        kept.clear()
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", nargs="+", default=["720p", "480p"], choices=sorted(RESOLUTIONS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--convs", action="store_true", help="first time the big convs in other forms (above)")
    parser.add_argument("--profile", nargs="*", default=[], choices=sorted(RESOLUTIONS),
                        help="at the end, one encode and one decode per resolution under torch.profiler")
    parser.add_argument("--fp32-res", nargs="*", default=["480p"], choices=sorted(RESOLUTIONS),
                        help="resolutions where every output is also compared with an fp32 (no TF32) reference run")  # fmt: skip
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    # The first variant listed is the baseline of rel_err.
    variants = args.variants
    convs = conv_forms() if args.convs else []
    if convs:
        print_table(convs, ["channels", "size", "form", "ms", "tflops", "rel_err", "error"])
    vae = build_vae(A14B.vae).to(device="cuda", dtype=torch.bfloat16).eval().requires_grad_(False)
    rows: list[dict[str, Any]] = []
    for res in args.res:
        rows += bench_resolution(vae, res, variants, args.runs, fp32_check=res in args.fp32_res)
    profiles = {res: profile_ops(vae, res) for res in args.profile}
    print_table(rows, ["res", "op", "variant", "chunk", "first_s", "median_s", "speedup", "peak_gib", "rel_err",
                       "err_vs_fp32", "max_abs_err", "error"])  # fmt: skip
    path = write_json(
        "vae_speed.json",
        {
            "environment": environment(),
            "frames": FRAMES,
            "runs": args.runs,
            "variants": {
                n: {"options": asdict(VARIANTS[n][0]), "encode_chunk": VARIANTS[n][1], "decode_chunk": VARIANTS[n][2]}
                for n in variants
            },
            "rows": rows,
            "conv_forms": convs,
            "profiles": profiles,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
