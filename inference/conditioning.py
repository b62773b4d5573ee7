"""What the DiT sees of the image: the VAE latent of [image, then black frames] behind a first-frame mask.

Shared by the pipeline's jobs and the kernel precompile's stand-in jobs (inference/precompile.py), which must run
the VAE on exactly the shapes a job does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

MASK_CHANNELS = 4

# Latent frames per VAE encode/decode chunk: 2 is faster than 1 (fewer, larger convolutions) at a decode peak that
# fits (bench/vae_speed.py, bench/README.md); the causal cache makes the result independent of it.
VAE_CHUNK_LATENTS = 2


def image_condition(vae: Any, pixels: torch.Tensor, num_frames: int, *, device: torch.device, dtype: torch.dtype,
                    on_chunk: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Image latent of [image, then num_frames - 1 black frames], preceded by the 4-channel first-frame mask.
    `pixels` is [3, H, W] in [-1, 1]; `on_chunk(frames_done, frames)` follows the VAE encoder through the video."""
    channels, height, width = pixels.shape
    video = torch.zeros(1, channels, num_frames, height, width, device=device, dtype=dtype)
    video[0, :, 0] = pixels.to(device=device, dtype=dtype)
    image_latent = vae.encode(video, chunk_latents=VAE_CHUNK_LATENTS, on_chunk=on_chunk)
    mask = torch.zeros(1, MASK_CHANNELS, *image_latent.shape[2:], device=device, dtype=image_latent.dtype)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, image_latent], dim=1).to(dtype)
