"""Triton's kernels compiled in other processes while the worker loads its weights.

On a machine where it never ran, a worker's warm-up spends ~22 s compiling Triton kernels, after the weights have
loaded (bench/README.md). Compiling depends on shapes, dtypes and the GPU, not on the weights' values, and loading
is bound by the disk, so other processes compile them meanwhile on stand-ins: the VAE and a DiT of two blocks at
the experts' width, with random weights (two blocks, because a later block's first norm also adds the previous
block's FFN output), run on the shapes of a default-length job, one process per resolution where they fit (each
resolution compiles its own shape specialisations, and Triton compiles on one core a process). Triton keeps what
it compiles on disk (TRITON_CACHE_DIR), where the warm-up then finds it. Not a thread: a thread doing this beside
the load slowed the load from 51 to 87 s (the two share the GIL; bench/README.md). cuDNN's tuning is not done
here: PyTorch keeps its tuned plans per thread, so only the worker's own warm-up can do it.

    python -m inference.precompile --model NAME [--device cuda:0] [--attention sla] [--fp8-linears] [--resolutions ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

import torch

from inference.checkpoint import load_dit
from inference.conditioning import VAE_CHUNK_LATENTS, image_condition
from inference.configs import ModelConfig, get_config
from inference.dit import KERNEL_BLOCKS
from inference.vae import load_vae

log = logging.getLogger(__name__)

_RESULT = "PRECOMPILED "


def stand_in_config(config: ModelConfig) -> ModelConfig:
    """`config` with a DiT of KERNEL_BLOCKS blocks (all a forward's kernels), every size unchanged."""
    return dataclasses.replace(config, dit=dataclasses.replace(config.dit, num_layers=KERNEL_BLOCKS))


@torch.no_grad()
def run_stand_ins(config: ModelConfig, *, device: torch.device, dtype: torch.dtype, attention: str,
                  fp8_linears: bool, resolutions: list[str] | None = None) -> dict[str, float]:
    """Each resolution's job kernels on stand-ins: the image encode, one DiT forward, the decode. Returns the
    seconds per resolution."""
    vae = load_vae(config, None, device=device, dtype=dtype)
    # cuDNN's heuristics instead of timing every algorithm: tuning here would be lost with this process.
    vae.options = dataclasses.replace(vae.options, cudnn_benchmark=False)
    # Random weights: "auto" (SLA where the checkpoint has its weights) means SLA here.
    dit = load_dit(stand_in_config(config), None, device=device, dtype=dtype,
                   attention="sla" if attention == "auto" else attention, expert="high")
    dit.eval().requires_grad_(False)
    if fp8_linears:
        dit.use_fp8_linears()
    seconds: dict[str, float] = {}
    for resolution in resolutions or list(config.resolutions):
        start = time.perf_counter()
        width, height = config.resolutions[resolution]
        # Any image but the black of the frames after it: an all-black video would be one repeated frame, which
        # the encoder computes once (VAEOptions.steady_frames), on other shapes than a job's.
        condition = image_condition(vae, torch.full((3, height, width), 0.5), config.default_frames, device=device,
                                    dtype=dtype)
        cfg = config.dit
        latent = torch.zeros(1, cfg.out_dim, *condition.shape[2:], device=device, dtype=dtype)
        timestep = torch.full((1,), 1000.0, device=device, dtype=dtype)
        context = torch.zeros(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
        dit(torch.cat([latent, condition], dim=1), timestep, context)
        vae.decode(latent, chunk_latents=VAE_CHUNK_LATENTS)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[resolution] = time.perf_counter() - start
    return seconds


class Precompile:
    """The precompile processes, started when made (before the load): one per group of resolutions, side by side,
    since each compiles its own shape specialisations and Triton compiles on one CPU core per process. `finish`
    waits for them after the load, `stop` ends them when the load fails. Never raises: the warm-up compiles
    whatever these did not."""

    def __init__(self, model: str, *, device: torch.device, attention: str, fp8_linears: bool,
                 groups: list[list[str] | None] | None = None) -> None:
        command = [sys.executable, "-m", "inference.precompile", "--model", model, "--device", str(device),
                   "--attention", attention, *(["--fp8-linears"] if fp8_linears else [])]
        self._started = time.perf_counter()
        self._children: list[tuple[subprocess.Popen[bytes], IO[str]]] = []
        for resolutions in groups or [None]:
            # A file, not a pipe: a chatty child never blocks. Closed by finish() or stop().
            output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
            try:
                process = subprocess.Popen([*command, *(["--resolutions", *resolutions] if resolutions else [])],
                                           stdout=output, stderr=subprocess.STDOUT)
            except OSError as exc:
                log.warning("kernel precompile could not start (%s); the warm-up compiles instead", exc)
                output.close()
                continue
            self._children.append((process, output))

    def finish(self, timeout_s: float = 180.0) -> dict[str, Any] | None:
        """Wait for them (killed after `timeout_s` in all); the seconds per resolution of those that finished, the
        seconds this waited (what they added to the load) and since they started, or None if none finished."""
        waiting = time.perf_counter()
        deadline = waiting + timeout_s
        seconds: dict[str, float] = {}
        for process, output in self._children:
            try:
                process.wait(timeout=max(deadline - time.perf_counter(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning("kernel precompile still running after %.0f s: stopped", timeout_s)
                self.stop()
                break
            output.seek(0)
            text = output.read()
            line = next((ln for ln in text.splitlines() if ln.startswith(_RESULT)), None)
            if process.returncode != 0 or line is None:
                log.warning("kernel precompile failed (exit %s); the warm-up compiles instead:\n%s",
                            process.returncode, text[-3000:])
                continue
            seconds.update(json.loads(line[len(_RESULT):]))
        self._close()
        if not seconds:
            return None
        now = time.perf_counter()
        return {"resolutions_s": seconds, "processes": len(self._children), "waited_s": now - waiting,
                "wall_s": now - self._started}

    def stop(self) -> None:
        for process, _ in self._children:
            if process.poll() is None:
                process.kill()
                process.wait()
        self._close()

    def _close(self) -> None:
        for _, output in self._children:
            output.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--attention", default="sla")
    parser.add_argument("--fp8-linears", action="store_true")
    parser.add_argument("--resolutions", nargs="*", help="default: all of the model's")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    seconds = run_stand_ins(get_config(args.model), device=device, dtype=dtype, attention=args.attention,
                            fp8_linears=args.fp8_linears, resolutions=args.resolutions)
    print(_RESULT + json.dumps(seconds), flush=True)


if __name__ == "__main__":
    main()
