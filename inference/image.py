"""The input image: reading it upright, choosing the output size, and turning it into the [-1, 1] tensor the VAE takes.

Sizes (spec section 6): each named resolution is a landscape (width, height); portrait inputs swap it and
near-square inputs (up to 4:3 either way) take a square of at least the same pixel area, its side rounded up
to a multiple of 16 (480p -> 640x640, 720p -> 960x960). Adaptive sizing keeps the named area and the input's
own aspect ratio, computed and rounded as TurboDiffusion's I2V script does. Every side is a multiple of 16
(VAE stride 8 x patch 2).

Resizing (`resize_mode`): "stretch", the default, is the reference's own preprocessing and so what the model was
distilled with: the whole image stretched to the target size by antialiased bilinear interpolation, kept as uint8,
then mapped to [-1, 1]. "crop" takes the largest centred crop of the target's aspect ratio first; "pad" fits the
whole image inside the target and fills the rest with black. Both then resize the same way.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from inference.configs import ModelConfig
from inference.types import RESIZE_MODES, InferenceInputError

SIZE_MULTIPLE = 16
DEFAULT_RESIZE_MODE = RESIZE_MODES[0]
# Aspect ratios closer (in log scale) to 1:1 than to 16:9 use the square size: up to 4:3 either way.
_SQUARE_LIMIT = math.sqrt(16 / 9)


def _round_to_multiple(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    # round() sends halves to even, as the reference's round() of a numpy float does (52.5 -> 52, not 53).
    return max(1, round(value / multiple)) * multiple


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
        # The reference's own expressions (aspect = h / w), so its float results and ties are ours too.
        ratio = in_h / in_w
        return _round_to_multiple(math.sqrt(area / ratio)), _round_to_multiple(math.sqrt(area * ratio))
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


def check_resize_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise InferenceInputError(f"unknown resize_mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    return mode


def _uint8_chw(image: Image.Image) -> torch.Tensor:
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, 3).permute(2, 0, 1)


def _resize_uint8(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """uint8 [3, h, w] -> uint8 [3, height, width], bilinear with antialiasing: what torchvision's Resize does to
    the reference's uint8 image (torch's uint8 kernel where the CPU has AVX2, else float math rounded back)."""
    if tuple(pixels.shape[1:]) == (height, width):
        return pixels
    batch = pixels.unsqueeze(0)
    if "AVX2" in torch.backends.cpu.get_cpu_capability() or "AVX512" in torch.backends.cpu.get_cpu_capability():
        resized = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    else:
        resized = F.interpolate(batch.float(), size=(height, width), mode="bilinear", align_corners=False,
                                antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return resized[0]


def _crop_box(in_w: int, in_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height): the largest centred box with the aspect ratio width:height."""
    if in_w * height > in_h * width:
        crop_w, crop_h = max(1, round(in_h * width / height)), in_h
    else:
        crop_w, crop_h = in_w, max(1, round(in_w * height / width))
    return (in_w - crop_w) // 2, (in_h - crop_h) // 2, crop_w, crop_h


def preprocess_image(image: Image.Image, width: int, height: int, resize_mode: str = DEFAULT_RESIZE_MODE) -> torch.Tensor:
    """[3, height, width] float32 in [-1, 1] (uint8 / 255, then (v - 0.5) / 0.5, the reference's normalisation).

    "stretch" resizes the whole image to the target (aspect ratio not kept; with adaptive sizes it changes by a
    few pixels at most); "crop" first cuts the largest centred box of the target's aspect ratio; "pad" resizes the
    whole image to fit inside the target and centres it on black."""
    if width <= 0 or height <= 0:
        raise InferenceInputError(f"target size must be positive, got {width}x{height}")
    check_resize_mode(resize_mode)
    pixels = _uint8_chw(image)
    in_h, in_w = pixels.shape[1:]
    if resize_mode == "crop":
        left, top, crop_w, crop_h = _crop_box(in_w, in_h, width, height)
        pixels = _resize_uint8(pixels[:, top:top + crop_h, left:left + crop_w], width, height)
    elif resize_mode == "pad":
        fit = min(width / in_w, height / in_h)
        fit_w, fit_h = min(width, max(1, round(in_w * fit))), min(height, max(1, round(in_h * fit)))
        canvas = torch.zeros((3, height, width), dtype=torch.uint8)
        left, top = (width - fit_w) // 2, (height - fit_h) // 2
        canvas[:, top:top + fit_h, left:left + fit_w] = _resize_uint8(pixels, fit_w, fit_h)
        pixels = canvas
    else:
        pixels = _resize_uint8(pixels, width, height)
    return pixels.float().div_(255.0).sub_(0.5).div_(0.5)


def validate_num_frames(n: int, max_frames: int) -> None:
    """Frame counts the VAE can encode: 4k+1 (1, 5, 9, ..., 81, ...), at most `max_frames`."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise InferenceInputError(f"num_frames must be an integer of the form 4k+1, got {n!r}")
    if n < 1 or (n - 1) % 4:
        raise InferenceInputError(f"num_frames must be 4k+1 (1, 5, 9, ..., 81), got {n}")
    if n > max_frames:
        raise InferenceInputError(f"num_frames must be at most {max_frames}, got {n}")
