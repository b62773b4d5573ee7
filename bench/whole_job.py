"""A whole image-to-video job on one GPU at full A14B size with random weights, through inference.pipeline:
umT5-XXL text encode, VAE encode, 4 rCM steps over both experts (fp8 block linears, SLA), VAE decode, mp4.

    python -m bench.whole_job [--res 720p 480p] [--jobs 2] [--linears fp8|bf16] [--compile] [--warm-up]
                              [--capped 720p:24 480p:16 ...] [--baseline 480p ...]

Both experts, the text encoder and the VAE stay resident. The first job of a size includes Triton/cuDNN warm-up
(the GPU worker does that warm-up at start); the reported numbers are from the last job. The mp4 is encoded while
the VAE decodes, as the worker does; mp4_tail_s is what is left after generate returns. `--baseline RES...` then
frees that pipeline and runs one job per size on the baseline in the same process: bf16 experts, dense SDPA
attention, the PyTorch reference ops, the VAE's reference options (two bf16 experts + umT5 take ~65 GiB, so 720p
activations may not fit beside them on an 80 GB card: an OOM is recorded).
`--capped RES:GIB...` then runs one job per entry with the process's GPU memory capped at GIB GiB
(torch.cuda.set_per_process_memory_fraction, as on a smaller card), on a pipeline made from the same modules with
memory_policy="auto": under a 24 GiB cap that plan streams the experts' blocks from pinned host memory.
Writes whole_job.json ($OUT or bench/results/).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.common import environment, print_table, write_json
from bench.dit_step import build_dit, set_dense
from inference.configs import A14B
from inference.pipeline import I2VPipeline
from inference.text_encoder import TextEncoder, build_umt5, toy_tokenizer
from inference.types import GenerationRequest
from inference.vae import REFERENCE_OPTIONS, build_vae
from inference.video import Mp4Stream

PROMPT = (
    "A golden retriever runs along a wide sandy beach at sunset, waves rolling in behind it, its fur lifting in "
    "the wind; the camera tracks beside the dog at its height, warm light, long shadows, gentle film grain, "
    "cinematic, realistic, detailed, high quality video with smooth natural motion and a calm ocean background"
)


def build_pipeline(linears: str, *, dense: bool = False, compile_blocks: bool = False) -> tuple[I2VPipeline, dict[str, float]]:
    sizes: dict[str, float] = {}
    experts = []
    for _ in ("high", "low"):
        dit = build_dit(A14B.dit.num_layers)
        if linears == "fp8":
            dit.use_fp8_linears()
        if dense:
            set_dense(dit, True, {})
        if compile_blocks:
            from turbokernels.torch_compile import compile_blocks as compile_dit_blocks

            compile_dit_blocks(dit)
        torch.cuda.empty_cache()
        experts.append(dit)
    sizes["expert_gib"] = sum(t.numel() * t.element_size() for t in experts[0].state_dict().values()) / 2**30
    text = TextEncoder(
        model=build_umt5(A14B.text, device="cuda", dtype=torch.bfloat16).requires_grad_(False),
        tokenizer=toy_tokenizer(A14B.text.vocab_size),
        config=A14B.text,
    )
    sizes["text_encoder_gib"] = sum(p.numel() * p.element_size() for p in text.model.parameters()) / 2**30
    vae = build_vae(A14B.vae).to(device="cuda", dtype=torch.bfloat16).eval().requires_grad_(False)
    sizes["resident_after_load_gib"] = torch.cuda.memory_allocated() / 2**30
    pipe = I2VPipeline(A14B, device=torch.device("cuda"), dtype=torch.bfloat16, high_noise=experts[0],
                       low_noise=experts[1], vae=vae, text_encoder=text, memory_policy="resident")
    return pipe, sizes


# The frames of the last uncapped job per size, to check that capped jobs (weights streamed) give the same video.
_LAST_FRAMES: dict[str, np.ndarray] = {}


def run_job(pipe: I2VPipeline, res: str) -> dict[str, Any]:
    """One job as the worker runs it: the mp4 is encoded while the VAE decodes (inference.video.Mp4Stream fed by
    the pipeline's frame_sink), so the job ends when the encoder's tail is written."""
    width, height = A14B.resolutions[res]
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    request = GenerationRequest(image=image, prompt=PROMPT, seed=1, num_steps=4, resolution=res, num_frames=81)
    with tempfile.TemporaryDirectory() as folder:
        stream = Mp4Stream(Path(folder) / "out.mp4", A14B.fps)
        torch.cuda.synchronize()
        started = time.perf_counter()
        with stream:
            result = pipe.generate(request, frame_sink=stream.write)
            torch.cuda.synchronize()
            generate_s = time.perf_counter() - started
            stream.finish()
        job_s = time.perf_counter() - started
        mp4_bytes = (Path(folder) / "out.mp4").stat().st_size
    previous = _LAST_FRAMES.get(res)
    if previous is not None and previous.shape == result.frames.shape:
        same = int(np.abs(previous.astype(np.int16) - result.frames.astype(np.int16)).max())
    else:
        same = None
    _LAST_FRAMES[res] = result.frames
    return {"res": res, **{k: round(v, 3) for k, v in result.timings.items()}, "generate_s": generate_s,
            "mp4_tail_s": job_s - generate_s, "mp4_mib": mp4_bytes / 2**20, "job_s": job_s,
            "peak_gib": (result.peak_memory_bytes or 0) / 2**30, "frames": result.num_frames,
            "size": f"{result.width}x{result.height}", "max_frame_diff_vs_previous_job": same}


def run_capped(pipe: I2VPipeline, caps: list[str], results: dict[str, Any]) -> None:
    """One job per "RES:GIB" entry with GPU memory capped at GIB GiB, on a pipeline that plans its memory under the
    first cap (the modules are the resident pipeline's, moved as that plan says)."""
    total = torch.cuda.get_device_properties(0).total_memory
    small: I2VPipeline | None = None
    for spec in caps:
        res, gib = spec.split(":")
        # Cached segments count towards the cap but are not given back by lowering it: release them first.
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(gib) * 2**30 / total))
        if small is None:
            small = I2VPipeline(A14B, device=torch.device("cuda"), dtype=torch.bfloat16, high_noise=pipe.experts["high"],
                                low_noise=pipe.experts["low"], vae=pipe.vae, text_encoder=pipe.text_encoder,
                                memory_policy="auto")
            torch.cuda.empty_cache()
            results["capped_plan"] = vars(small.memory_plan)
            results["capped_reserved_after_plan_gib"] = torch.cuda.memory_reserved() / 2**30
            streamer = getattr(small._experts["high"], "streamer", None)
            if streamer is not None:
                results["capped_host_pinned"] = streamer.pinned
                results["capped_expert_host_gib"] = streamer.host_bytes / 2**30
        torch.cuda.reset_peak_memory_stats()
        try:
            row = {"job": f"capped {gib} GiB", **run_job(small, res)}
        except torch.OutOfMemoryError:
            results.setdefault("errors", []).append(f"capped {spec}: out of memory\n{traceback.format_exc()}")
            print(results["errors"][-1], flush=True)
            torch.cuda.empty_cache()
            continue
        row["reserved_peak_gib"] = torch.cuda.max_memory_reserved() / 2**30
        uncapped = [r for r in results["rows"] if r["res"] == res and isinstance(r["job"], int)]
        if uncapped:
            row["vs_uncapped"] = row["job_s"] / uncapped[-1]["job_s"]
        results["rows"].append(row)
        print(row, flush=True)
        write_json("whole_job.json", results)
    torch.cuda.set_per_process_memory_fraction(1.0)


def run_baseline(sizes: list[str], results: dict[str, Any]) -> None:
    """One job per size on bf16 experts with dense SDPA and the reference ops, in this process."""
    from turbokernels import dispatch

    try:
        pipe, _ = build_pipeline("bf16", dense=True)
    except torch.OutOfMemoryError:
        results.setdefault("errors", []).append("baseline: the bf16 experts did not fit\n" + traceback.format_exc())
        return
    dispatch.set_backend("reference")
    pipe.vae.options = REFERENCE_OPTIONS  # the VAE as first written too
    try:
        for res in sizes:
            try:
                row = {"job": "baseline dense bf16", **run_job(pipe, res)}
            except torch.OutOfMemoryError:
                results.setdefault("errors", []).append(f"baseline {res}: out of memory\n{traceback.format_exc()}")
                torch.cuda.empty_cache()
                continue
            fast = [r for r in results["rows"] if r["res"] == res and r["job"] != "baseline dense bf16"]
            if fast:
                fast[-1]["speedup"] = row["job_s"] / fast[-1]["job_s"]
            results["rows"].append(row)
            print(row, flush=True)
            write_json("whole_job.json", results)
    finally:
        dispatch.set_backend(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", nargs="+", default=["720p", "480p"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--linears", default="fp8", choices=["fp8", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile each DiT block (TURBO_COMPILE=1)")
    parser.add_argument("--baseline", nargs="*", default=[], help="sizes to run once on the dense bf16 baseline")
    parser.add_argument("--capped", nargs="*", default=[], metavar="RES:GIB",
                        help="after the uncapped jobs, one job per entry with GPU memory capped at GIB GiB")
    parser.add_argument("--warm-up", action="store_true",
                        help="run I2VPipeline.warm_up() first, as the GPU worker does (job 0 is then a warmed first job)")
    args = parser.parse_args()
    results: dict[str, Any] = {"environment": environment(), "linears": args.linears, "compile": args.compile,
                               "rows": []}
    print(results["environment"], flush=True)
    started = time.perf_counter()
    pipe, sizes = build_pipeline(args.linears, compile_blocks=args.compile)
    results.update(sizes, build_s=time.perf_counter() - started)
    print(sizes, flush=True)
    if args.warm_up:
        results["warm_up_s"] = pipe.warm_up(args.res)
        print("warm-up seconds:", results["warm_up_s"], flush=True)
    for res in args.res:
        for job in range(args.jobs):
            try:
                row = {"job": job, **run_job(pipe, res)}
            except Exception:
                results.setdefault("errors", []).append(traceback.format_exc())
                print(traceback.format_exc(), flush=True)
                break
            results["rows"].append(row)
            print(row, flush=True)
            write_json("whole_job.json", results)
    if args.capped:
        run_capped(pipe, args.capped, results)
    if args.baseline:
        del pipe
        torch.cuda.empty_cache()
        run_baseline(args.baseline, results)
    print_table(results["rows"], ["res", "job", "text_encode", "image_encode", "denoise", "decode", "decode_encoder_wait", "mp4_tail_s",
                                  "job_s", "speedup", "vs_uncapped", "denoise_weights_copy", "peak_gib"])
    print("wrote", write_json("whole_job.json", results))


if __name__ == "__main__":
    main()
