"""Cold start: a fresh worker process, weights on local disk, to the end of its first full-speed 720p job.

    python3 -m bench.cold_start --dir /root/weights [--write] [--runs new_machine restart new_machine_one_precompile ...]

`--write` first puts random full-size weights in the folder in the layout the worker reads (inference/weights.md):
both experts as int8 "-quant" .pth files, the VAE .pth (fp32), the umT5-XXL .pth (bf16, Wan key names) and a
tokenizer folder (the toy tokenizer saved as tokenizer.json: the device has no hub access).

Each run starts a new Python process that does what `run_gpu_worker` does before taking jobs (import, then
`I2VPipeline.load` with the worker's defaults, then `warm_up()`), then runs two 720p jobs as the worker does (mp4
encoded while decoding; bench.whole_job.run_job) in the thread that warmed up, as the worker does (cuDNN's tuned
plans are kept per thread). Before each run the page cache is dropped (`sync; echo 3 >
/proc/sys/vm/drop_caches`, root only; the run records whether it worked), so the weights come from the disk.
- new_machine: an empty Triton cache (a worker's first start on a machine);
- restart: the Triton cache the first run left (a worker restarted on the same machine);
- new_machine_one_precompile: an empty Triton cache of its own, and one kernel precompile process for all
  resolutions instead of one per resolution (inference/precompile.py): the same-run baseline of running them side
  by side;
- new_machine_no_precompile: an empty Triton cache of its own, and no kernel precompile process during the load
  (`load(precompile=False)`): the same-run baseline of the precompile;
- restart_whole_warm_up: as restart, but the warm-up's step runs all the experts' blocks instead of the first
  KERNEL_BLOCKS (inference/dit.py): the same-run baseline of the shorter warm-up.
The cold start is the wall time from the parent's Popen to the end of the first 720p job; the second job says
whether the first ran at full speed. Inside the load: seconds per component and for the fp8 conversion.
Writes cold_start.json ($OUT or bench/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# run -> (a Triton cache of its own, empty; the kernel precompile during the load: as the worker does it, in one
# process, or none; the warm-up as the worker does it, or through every block)
RUNS = {"new_machine": (True, "worker", "worker"), "restart": (False, "worker", "worker"),
        "new_machine_one_precompile": (True, "one", "worker"), "new_machine_no_precompile": (True, "none", "worker"),
        "restart_whole_warm_up": (False, "worker", "whole")}
_RESULT = "COLD_START_RESULT "


def write_weights(folder: Path, model: str = "wan2.2-i2v-a14b", device: str = "cuda") -> dict[str, float]:
    """Random weights of `model` in the worker's layout (drawn on `device`); returns each file's GiB."""
    import torch

    from inference.checkpoint import load_dit
    from inference.configs import get_config
    from inference.quant import quantize_model_linears
    from inference.text_encoder import random_wan_state_dict, toy_tokenizer
    from inference.vae import build_vae

    config = get_config(model)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    folder.mkdir(parents=True, exist_ok=True)
    for expert, name in (("high", config.high_noise_file), ("low", config.low_noise_file)):
        dit = load_dit(config, None, device=device, dtype=dtype, expert=expert)
        quantize_model_linears(dit)
        torch.save({k: v.cpu() for k, v in dit.state_dict().items()}, folder / name)
        del dit
    torch.save(build_vae(config.vae).state_dict(), folder / config.vae_file)
    text = random_wan_state_dict(config.text, device=device, dtype=dtype)
    torch.save({k: v.cpu() for k, v in text.items()}, folder / config.text_encoder_file)
    del text
    toy_tokenizer(config.text.vocab_size).save_pretrained(str(folder / config.tokenizer_dir))
    os.sync()
    return {p.name: p.stat().st_size / 2**30 for p in folder.iterdir() if p.is_file()}


def drop_page_cache() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def child(folder: str, precompile: str, warm_up: str, started: float) -> None:
    """The worker's start-up, timed; prints one result line."""
    marks: dict[str, float] = {"process_start": started}
    import torch

    import inference.pipeline as pipeline_module
    from inference.dit import WanDiT

    marks["imported"] = time.time()
    parts: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    for name in ("load_dit", "load_vae", "load_text_encoder"):
        setattr(pipeline_module, name, timed(name, getattr(pipeline_module, name)))
    WanDiT.use_fp8_linears = timed("fp8_conversion", WanDiT.use_fp8_linears)  # type: ignore[method-assign]
    if precompile == "one":
        groups = pipeline_module.precompile_groups
        pipeline_module.precompile_groups = lambda *a, **k: [None] if groups(*a, **k) else []  # type: ignore[assignment]
    pipe = pipeline_module.I2VPipeline.load("wan2.2-i2v-a14b", folder, precompile=precompile != "none")
    marks["loaded"] = time.time()
    if warm_up == "whole":
        for expert in pipe.experts.values():
            expert.first_blocks = lambda count: contextlib.nullcontext()
    warm = pipe.warm_up()
    marks["warmed_up"] = time.time()
    from bench.whole_job import run_job

    jobs = []
    for _ in range(2):
        jobs.append(run_job(pipe, "720p"))
        marks[f"job{len(jobs)}_done"] = time.time()
    result = {
        "marks_s": {k: round(v - started, 2) for k, v in marks.items()},
        "load_parts_s": {k: round(v, 2) for k, v in parts.items()},
        "precompiled": pipe.precompiled,
        "warm_up_s": warm,
        "memory_plan": str(pipe.memory_plan),
        "jobs": jobs,
    }
    print(_RESULT + json.dumps(result), flush=True)


def run(name: str, folder: Path, triton_cache: Path) -> dict[str, Any]:
    dropped = drop_page_cache()
    env = dict(os.environ, TRITON_CACHE_DIR=str(triton_cache))
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cold_start", "--child", "--dir", str(folder), "--started", repr(started),
         "--precompile", RUNS[name][1], "--warm-up", RUNS[name][2]],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.time() - started
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT)), None)
    if line is None:
        return {"run": name, "error": (proc.stdout + proc.stderr)[-3000:], "page_cache_dropped": dropped}
    result = json.loads(line[len(_RESULT) :])
    result.update(run=name, page_cache_dropped=dropped, process_wall_s=wall, stderr_tail=proc.stderr[-2000:],
                  cold_start_s=result["marks_s"]["job1_done"])  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--precompile", default="worker", help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", default="worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dir, args.precompile, args.warm_up, args.started)
        return
    from bench.common import environment, print_table, write_json

    folder = Path(args.dir)
    results: dict[str, Any] = {"environment": environment()}
    if args.write:
        start = time.time()
        results["files_gib"] = write_weights(folder)
        results["write_s"] = time.time() - start
        print(f"wrote {folder} in {results['write_s']:.0f} s: {results['files_gib']}", flush=True)
    results["disk"] = subprocess.run(["df", "-h", str(folder)], capture_output=True, text=True).stdout
    rows = []
    with tempfile.TemporaryDirectory() as caches:
        shared = Path(caches) / "shared"  # the first run's, kept for the restarts
        for index, name in enumerate(args.runs):
            cache = Path(caches) / str(index) if RUNS[name][0] and index > 0 else shared
            row = run(name, folder, cache)
            print(json.dumps(row), flush=True)
            rows.append(row)
    results["runs"] = rows
    table = []
    for row in rows:
        if "error" in row:
            table.append({"run": row["run"], "error": row["error"][-200:]})
            continue
        marks, jobs = row["marks_s"], row["jobs"]
        table.append({
            "run": row["run"], "imported": marks["imported"], "loaded": marks["loaded"],
            "warmed_up": marks["warmed_up"], "precompile_s": (row["precompiled"] or {}).get("wall_s"),
            "load_waited_s": (row["precompiled"] or {}).get("waited_s"),
            "cold_start_s": row["cold_start_s"], "job1_s": jobs[0]["job_s"],
            "job2_s": jobs[1]["job_s"], **{k: v for k, v in row["load_parts_s"].items()},
            "dropped": row["page_cache_dropped"],
        })  # fmt: skip
    print_table(table, ["run", "imported", "loaded", "warmed_up", "precompile_s", "load_waited_s", "cold_start_s", "job1_s", "job2_s", "load_dit",
                        "load_vae", "load_text_encoder", "fp8_conversion", "dropped", "error"])  # fmt: skip
    print(f"wrote {write_json('cold_start.json', results)}")


if __name__ == "__main__":
    main()
