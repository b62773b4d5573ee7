"""A whole image-to-video job on one GPU at full A14B size with random weights, through inference.pipeline:
umT5-XXL text encode, VAE encode, 4 rCM steps over both experts (fp8 block linears, SLA), VAE decode, mp4.

    python -m bench.whole_job [--res 720p 480p] [--jobs 2] [--linears fp8|bf16] [--warm-up]
                              [--capped 720p:24 480p:16 ...] [--baseline 480p ...]
    python -m bench.whole_job --gpus 1 2 4 8 [--res 720p 480p] [--jobs 2]      # one job across N GPUs
    python -m bench.whole_job --gpus 1 2 --device cpu --model tiny --jobs 1    # CPU smoke check (gloo)

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

`--gpus N...` runs each N as its own group of N processes (torch.multiprocessing, NCCL; no torchrun) with
inference.parallel's ParallelI2VPipeline (N = 1: the plain I2VPipeline in one spawned process, the baseline of the
scaling table). Every rank builds the same random-weight model on its GPU and runs the same jobs; rank 0 encodes
the mp4. Per rank it records each stage's seconds; after the `--jobs` untimed jobs one more job runs with the
group's collectives timed (device synchronized around each: communication seconds, calls and MiB, by kind; that job
is slower, since nothing overlaps). Writes whole_job_gpus.json with a row per rank and job and a scaling table.
"""

from __future__ import annotations

import argparse
import json
import os
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


def build_pipeline(linears: str, *, dense: bool = False, cls: type[I2VPipeline] = I2VPipeline) -> tuple[I2VPipeline, dict[str, float]]:
    sizes: dict[str, float] = {}
    experts = []
    for _ in ("high", "low"):
        dit = build_dit(A14B.dit.num_layers)
        if linears == "fp8":
            dit.use_fp8_linears()
        if dense:
            set_dense(dit, True, {})
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
    pipe = cls(A14B, device=torch.device("cuda", torch.cuda.current_device()), dtype=torch.bfloat16, high_noise=experts[0],
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


STAGES = ["text_encode", "image_encode", "denoise", "decode"]


def _parallel_pipeline(model: str, group: Any, linears: str) -> I2VPipeline:
    """This rank's pipeline: the plain one alone, ParallelI2VPipeline joined to the group otherwise."""
    from inference.parallel.pipeline import ParallelI2VPipeline

    if model == "tiny":
        if group.world == 1:
            return I2VPipeline.load("tiny", device=str(group.device))
        return ParallelI2VPipeline.load("tiny", group=group)
    pipe, _ = build_pipeline(linears, cls=I2VPipeline if group.world == 1 else ParallelI2VPipeline)
    return pipe.join(group) if isinstance(pipe, ParallelI2VPipeline) else pipe


def _parallel_job(pipe: I2VPipeline, model: str, res: str, frames: int | None, first: bool) -> dict[str, Any]:
    """One job on every rank together; rank 0 streams the mp4 as the worker does."""
    config = pipe.config
    width, height = config.resolutions[res]
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    request = GenerationRequest(image=image, prompt=PROMPT, seed=1, num_steps=4, resolution=res,
                                num_frames=frames or config.default_frames, adaptive_resolution=False)
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as folder:
        stream = Mp4Stream(Path(folder) / "out.mp4", config.fps) if first else None
        sync()
        started = time.perf_counter()
        if stream is None:
            result = pipe.generate(request)
            sync()
            generate_s = job_s = time.perf_counter() - started
        else:
            with stream:
                result = pipe.generate(request, frame_sink=stream.write)
                sync()
                generate_s = time.perf_counter() - started
                stream.finish()
            job_s = time.perf_counter() - started
    return {"res": res, **{k: round(float(v), 4) for k, v in result.timings.items()}, "generate_s": generate_s,
            "job_s": job_s, "peak_gib": (result.peak_memory_bytes or 0) / 2**30, "frames": result.num_frames,
            "size": f"{result.width}x{result.height}"}


def _parallel_rank(group: Any, options: dict[str, Any], folder: str) -> None:
    """What every rank of one `--gpus N` group runs (spawned by inference.parallel.launch)."""
    import torch.distributed as dist

    if group.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // group.world))
    started = time.perf_counter()
    pipe = _parallel_pipeline(options["model"], group, options["linears"])
    rows: list[dict[str, Any]] = []
    build_s = time.perf_counter() - started
    for res in options["res"]:
        for job in range(options["jobs"] + (1 if group.world > 1 else 0)):
            timed = group.world > 1 and job == options["jobs"]
            group.timed = timed
            try:
                row = _parallel_job(pipe, options["model"], res, options["frames"], group.is_first)
            except Exception:
                rows.append({"res": res, "job": job, "error": traceback.format_exc()})
                break
            rows.append({"res": res, "job": "comm-timed" if timed else job, **row})
    group.timed = False
    every: list[Any] = [None] * group.world
    if group.world > 1:
        dist.all_gather_object(every, {"rank": group.rank, "build_s": build_s, "rows": rows})
    else:
        every = [{"rank": 0, "build_s": build_s, "rows": rows}]
    if group.is_first:
        Path(folder, f"gpus{group.world}.json").write_text(json.dumps(every, default=str))


def run_gpus(args: argparse.Namespace) -> None:
    """Each N of --gpus as its own group; rows per rank and job, and the scaling table of rank 0's last jobs."""
    from inference.parallel.launch import spawn

    results: dict[str, Any] = {"environment": environment(), "model": args.model, "device": args.device,
                               "linears": args.linears, "rows": [], "scaling": []}
    options = {"model": args.model, "linears": args.linears, "res": args.res, "jobs": args.jobs,
               "frames": args.frames}
    with tempfile.TemporaryDirectory() as folder:
        for gpus in args.gpus:
            try:
                spawn(_parallel_rank, gpus, options, folder, device=args.device)
            except Exception:
                results.setdefault("errors", []).append(f"--gpus {gpus}:\n{traceback.format_exc()}")
                print(traceback.format_exc(), flush=True)
                continue
            for rank in json.loads(Path(folder, f"gpus{gpus}.json").read_text()):
                for row in rank["rows"]:
                    results["rows"].append({"gpus": gpus, "rank": rank["rank"], "build_s": rank["build_s"], **row})
            write_json("whole_job_gpus.json", results)
    for res in args.res:
        last = {}
        for row in results["rows"]:
            if row["res"] == res and row["rank"] == 0 and isinstance(row.get("job"), int) and "job_s" in row:
                last[row["gpus"]] = row  # the last untimed job of each N
        comm = {row["gpus"]: row for row in results["rows"]
                if row["res"] == res and row["rank"] == 0 and row.get("job") == "comm-timed"}
        base = last.get(1)
        for gpus, row in sorted(last.items()):
            speedup = base["job_s"] / row["job_s"] if base else None
            results["scaling"].append({
                "res": res, "gpus": gpus, **{stage: row.get(stage) for stage in STAGES}, "job_s": row["job_s"],
                "speedup": speedup, "efficiency": speedup / gpus if speedup else None,
                "comm_s": comm.get(gpus, {}).get("comm_s"), "comm_mib": comm.get(gpus, {}).get("comm_mib"),
            })
    print_table(results["rows"], ["gpus", "rank", "res", "job", *STAGES, "job_s", "comm_s", "comm_all_to_all_s",
                                  "comm_all_gather_s", "peak_gib"])
    print()
    print_table(results["scaling"], ["res", "gpus", *STAGES, "job_s", "speedup", "efficiency", "comm_s", "comm_mib"])
    print("wrote", write_json("whole_job_gpus.json", results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", nargs="+", default=["720p", "480p"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--linears", default="fp8", choices=["fp8", "bf16"])
    parser.add_argument("--baseline", nargs="*", default=[], help="sizes to run once on the dense bf16 baseline")
    parser.add_argument("--capped", nargs="*", default=[], metavar="RES:GIB",
                        help="after the uncapped jobs, one job per entry with GPU memory capped at GIB GiB")
    parser.add_argument("--warm-up", action="store_true",
                        help="run I2VPipeline.warm_up() first, as the GPU worker does (job 0 is then a warmed first job)")
    parser.add_argument("--gpus", nargs="+", type=int, default=None,
                        help="run each N as a group of N processes (sequence parallel), e.g. --gpus 1 2 4 8")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="with --gpus: cpu runs the ranks on the CPU (gloo), for a smoke check with --model tiny")
    parser.add_argument("--model", default="a14b", choices=["a14b", "tiny"],
                        help="with --gpus: the full-size model with random weights, or the tiny one")
    parser.add_argument("--frames", type=int, default=None, help="with --gpus: frames per video (default 81 / tiny's)")
    args = parser.parse_args()
    if args.gpus:
        if args.model == "a14b" and args.frames is None:
            args.frames = 81
        if args.model == "tiny" and args.res == ["720p", "480p"]:
            args.res = ["480p"]
        run_gpus(args)
        return
    results: dict[str, Any] = {"environment": environment(), "linears": args.linears,
                               "rows": []}
    print(results["environment"], flush=True)
    started = time.perf_counter()
    pipe, sizes = build_pipeline(args.linears)
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
