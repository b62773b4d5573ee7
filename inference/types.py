"""What callers hand the pipeline and what they get back. The web worker depends only on these names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# How the input image meets the video size (inference.image.preprocess_image); the first is the default.
RESIZE_MODES = ("stretch", "crop", "pad")


class InferenceInputError(ValueError):
    """A request the model cannot serve (bad frame count, unknown resolution...). The message names the problem."""


class WeightsError(RuntimeError):
    """Weight files are missing or do not match the model. The message names the file, key or shape."""


class GenerationCanceled(Exception):
    """Raised between steps when the caller's cancellation hook says stop."""


@dataclass(frozen=True)
class GenerationRequest:
    image: Image.Image
    prompt: str
    seed: int
    num_steps: int = 4
    resolution: str | None = None  # None: the model's default ("480p" / "720p")
    num_frames: int | None = None  # None: the model's default; must be 4k+1
    adaptive_resolution: bool = True  # keep the input's aspect ratio at the target area
    ode: bool = False  # deterministic ODE steps instead of the default SDE
    loras: tuple[tuple[str, float], ...] = ()  # installed LoRAs (name, strength), at most 3, both experts
    resize_mode: str = RESIZE_MODES[0]  # "stretch" (the reference's), "crop" or "pad": how the image meets the size


@dataclass(frozen=True)
class ProgressEvent:
    """Where generate() stands: `stage` is the stage running now (an event comes as each stage starts and as it
    advances), `progress` the overall fraction so far, `fraction` how much of `stage` is done."""

    stage: str  # "text_encode" | "image_encode" | "denoise" | "decode" | "done"
    progress: float  # overall fraction 0..1
    step: int | None = None  # denoising steps finished so far, only for stage "denoise"
    total_steps: int | None = None
    fraction: float | None = None  # 0..1 of `stage` done; None: derived from step / total_steps, else 0

    def stage_fraction(self) -> float:
        if self.fraction is not None:
            return max(0.0, min(1.0, self.fraction))
        if self.step is not None and self.total_steps:
            return max(0.0, min(1.0, self.step / self.total_steps))
        return 0.0


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    fps: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    peak_memory_bytes: int | None = None  # GPU peak, None on CPU
    device_name: str = "cpu"

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


ProgressCallback = Callable[[ProgressEvent], None]
CancelHook = Callable[[], bool]
