"""TurboDiffusion rCM sampling: 1 to 4 steps over the two Wan2.2 experts, no classifier-free guidance.

The schedule and update rules follow spec section 6 so that distilled checkpoints see exactly the times they
were trained on. The sampler knows nothing about the DiT's conditioning: the caller hands it two denoisers that
map (x_t, timestep) to a velocity, with the text context and image condition already bound in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from inference.types import CancelHook, GenerationCanceled, InferenceInputError

# TrigFlow times after the first one; the first is atan(sigma_max). Fixed by the rCM distillation.
_TRIGFLOW_MID_TIMES = (1.5, 1.4, 1.0)
MAX_STEPS = len(_TRIGFLOW_MID_TIMES) + 1


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """x: [B, 16, f, h, w] in the model dtype; timestep: [B] = t * 1000 in the model dtype -> velocity like x."""
        ...


StepCallback = Callable[[int, int], None]  # (1-based step just finished, total steps)


def check_num_steps(num_steps: int, max_steps: int = MAX_STEPS) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= max_steps:
        raise InferenceInputError(f"num_steps must be an integer from 1 to {max_steps}, got {num_steps!r}")


def rcm_timesteps(num_steps: int, sigma_max: float = 200.0) -> list[float]:
    """Rectified-flow times t_0 > ... > t_{N-1} > 0 for an N-step rCM schedule (N + 1 values, last is 0)."""
    check_num_steps(num_steps)
    if not sigma_max > 0:
        raise InferenceInputError(f"sigma_max must be positive, got {sigma_max!r}")
    trig = [math.atan(sigma_max), *_TRIGFLOW_MID_TIMES[: num_steps - 1], 0.0]
    return [math.sin(s) / (math.sin(s) + math.cos(s)) for s in trig]


def expert_plan(timesteps: Sequence[float], boundary: float) -> list[str]:
    """Which expert ("high" / "low") serves each step: high noise while t >= boundary."""
    return ["high" if t >= boundary else "low" for t in timesteps[:-1]]


def sample(
    high_noise: Denoiser,
    low_noise: Denoiser,
    shape: Sequence[int],
    *,
    seed: int,
    num_steps: int = 4,
    sigma_max: float = 200.0,
    boundary: float = 0.9,
    ode: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    on_step: StepCallback | None = None,
    should_cancel: CancelHook | None = None,
) -> torch.Tensor:
    """Run rCM from pure noise to a clean latent of `shape`; returns fp32 on `device`.

    Noise is drawn in fp32 from one generator seeded with `seed` (initial noise first, then one fresh eps per SDE
    step), and the state is carried in fp64 so the few large steps do not accumulate rounding. `should_cancel` is
    asked before every step; `on_step` is told after every step.
    """
    timesteps = rcm_timesteps(num_steps, sigma_max)
    plan = expert_plan(timesteps, boundary)
    device = torch.device(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))

    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=device)
    x = noise.to(torch.float64) * timesteps[0]
    batch = x.shape[0]
    for step, (t, t_next) in enumerate(itertools.pairwise(timesteps), start=1):
        if should_cancel is not None and should_cancel():
            raise GenerationCanceled(f"canceled before denoising step {step} of {num_steps}")
        denoiser = high_noise if plan[step - 1] == "high" else low_noise
        timestep = torch.full((batch,), t * 1000.0, dtype=dtype, device=device)
        v = denoiser(x.to(dtype), timestep).to(torch.float64)
        if v.shape != x.shape:
            raise RuntimeError(f"denoiser returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        if ode:
            x = x - (t - t_next) * v
        else:
            eps = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=device)
            x = (1.0 - t_next) * (x - t * v) + t_next * eps.to(torch.float64)
        if on_step is not None:
            on_step(step, num_steps)
    return x.to(torch.float32)
