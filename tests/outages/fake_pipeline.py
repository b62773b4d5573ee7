"""A stand-in for the I2V pipeline inside real worker processes, steered by environment variables so a test can
make one process slow, failing or out of memory without touching its code:

- HARDENING_STEP_SECONDS: seconds each denoising step takes (default 0).
- HARDENING_RUN_LOG: a file that gets one line "<prompt>" per generate() call, so a test can count runs across
  processes.
- A prompt containing "[oom]" raises torch.cuda.OutOfMemoryError at the first step, as a real GPU would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from inference.types import GenerationCanceled, GenerationRequest, GenerationResult, ProgressEvent

FRAME_SIZE = (48, 32)  # width, height


class FakePipeline:
    device_name = "Fake GPU (hardening tests)"

    def __init__(self, model: str) -> None:
        self.model = model
        self.step_seconds = float(os.environ.get("HARDENING_STEP_SECONDS", "0"))
        self.run_log = os.environ.get("HARDENING_RUN_LOG", "")

    def generate(self, request: GenerationRequest, progress: Callable[[ProgressEvent], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> GenerationResult:
        if self.run_log:
            with open(self.run_log, "a") as log:
                log.write(f"{request.prompt}\n")
        emit = progress or (lambda event: None)
        emit(ProgressEvent(stage="text_encode", progress=0.05))
        for step in range(1, request.num_steps + 1):
            if should_cancel is not None and should_cancel():
                raise GenerationCanceled(f"canceled before step {step}")
            if "[oom]" in request.prompt:
                import torch

                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.19 GiB total capacity)")
            time.sleep(self.step_seconds)
            emit(ProgressEvent(stage="denoise", progress=0.1 + 0.8 * step / request.num_steps, step=step,
                               total_steps=request.num_steps))
        frames = np.random.default_rng(request.seed).integers(
            0, 256, size=(request.num_frames or 5, FRAME_SIZE[1], FRAME_SIZE[0], 3), dtype=np.uint8)
        emit(ProgressEvent(stage="done", progress=1.0))
        return GenerationResult(frames=frames, fps=16, timings={"denoise": self.step_seconds * request.num_steps},
                                device_name=self.device_name)
