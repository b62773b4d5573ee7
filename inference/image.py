"""The input image: reading it upright, choosing the output size, and turning it into the [-1, 1] tensor the VAE takes.

Sizes (spec section 6): each named resolution is a landscape (width, height); portrait inputs swap it and
near-square inputs (up to 4:3 either way) take a square of at least the same pixel area, its side rounded up
to a multiple of 16 (480p -> 640x640, 720p -> 960x960). Adaptive sizing keeps the named area and the input's
own aspect ratio. Every side is a multiple of 16 (VAE stride 8 x patch 2).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from inference.configs import ModelConfig
from inference.types import InferenceInputError

SIZE_MULTIPLE = 16
# Aspect ratios closer (in log scale) to 1:1 than to 16:9 use the square size: up to 4:3 either way.
_SQUARE_LIMIT = math.sqrt(16 / 9)


def _round_to_multiple(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)


def target_size(
    config: ModelConfig, image_size: tuple[int, int], resolution: str | None, adaptive: bool
) -> tuple[int, int]:
    """(width, height) of the video for an input image of `image_size` (width, height)."""
    name = config.default_resolution if resolution is None else resolution
    if name not in config.resolutions:
        known = ", ".join(sorted(config.resolutions))
        raise InferenceInputError(f"unknown resolution {name!r} for model {config.name}; choose one of: {known}")
    in_w, in_h = image_size
    if in_w <= 0 or in_h <= 0:
        raise InferenceInputError(f"image size must be positive, got {in_w}x{in_h}")
    base_w, base_h = config.resolutions[name]
    area = base_w * base_h
    aspect = in_w / in_h
    if adaptive:
        height = math.sqrt(area / aspect)
        return _round_to_multiple(height * aspect), _round_to_multiple(height)
    if 1 / _SQUARE_LIMIT <= aspect <= _SQUARE_LIMIT:
        # Rounded up: 480p -> 640x640 and 720p -> 960x960, the squares upstream uses.
        side = math.ceil(math.sqrt(area) / SIZE_MULTIPLE) * SIZE_MULTIPLE
        return side, side
    landscape = (max(base_w, base_h), min(base_w, base_h))
    return landscape if aspect > 1 else (landscape[1], landscape[0])


def load_image(source: str | os.PathLike[str] | bytes | Image.Image) -> Image.Image:
    """An RGB image, turned upright by its EXIF orientation; transparent areas become white."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
            image.load()
        except (UnidentifiedImageError, OSError) as exc:
            what = "image bytes" if isinstance(source, bytes) else f"image file {source}"
            raise InferenceInputError(f"cannot read {what}: {exc}") from exc
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def preprocess_image(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """[3, height, width] float32 in [-1, 1]: the largest centred crop of the target aspect ratio, resized with
    antialiasing (bicubic). Cropping instead of stretching keeps shapes true when a fixed size's aspect differs
    from the input's; with adaptive sizes the crop is at most a few pixels."""
    if width <= 0 or height <= 0:
        raise InferenceInputError(f"target size must be positive, got {width}x{height}")
    image = image.convert("RGB")
    in_w, in_h = image.size
    scale = min(in_w / width, in_h / height)
    crop_w, crop_h = width * scale, height * scale
    left, top = (in_w - crop_w) / 2, (in_h - crop_h) / 2
    resized = image.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)


def validate_num_frames(n: int, max_frames: int) -> None:
    """Frame counts the VAE can encode: 4k+1 (1, 5, 9, ..., 81, ...), at most `max_frames`."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise InferenceInputError(f"num_frames must be an integer of the form 4k+1, got {n!r}")
    if n < 1 or (n - 1) % 4:
        raise InferenceInputError(f"num_frames must be 4k+1 (1, 5, 9, ..., 81), got {n}")
    if n > max_frames:
        raise InferenceInputError(f"num_frames must be at most {max_frames}, got {n}")
