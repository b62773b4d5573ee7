"""Our default preprocessing against an independent implementation of TurboDiffusion's I2V steps.

The reference script (turbodiffusion/inference/wan2.2_i2v_infer.py) does, in this order:
- target size: a fixed (width, height) per resolution, or with adaptive resolution the named area with the image's
  aspect ratio r = h / w: ideal_w = sqrt(area / r), ideal_h = sqrt(area * r), each side round(ideal / 16) * 16
  with Python's round (halves to even);
- the uint8 RGB image resized to (h, w), stretched (aspect ratio not kept), bilinear with antialiasing: a triangle
  filter widened by the shrink factor when shrinking, plain bilinear (pixel centres aligned) when enlarging;
- the result kept as uint8, then / 255 and normalised with mean 0.5 and std 0.5 into [-1, 1].

Written here in numpy float64 from that description, it shares no code with inference.image. The two may differ by
one uint8 level (torch's uint8 kernel, which torchvision uses on AVX2 CPUs, rounds to uint8 between its horizontal
and vertical passes and uses fixed-point weights): at most 1/255 on the [0, 1] pixel scale.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference.configs import A14B
from inference.image import preprocess_image, target_size


def _reference_size(image_size: tuple[int, int], base: tuple[int, int]) -> tuple[int, int]:
    width, height = image_size
    area = base[0] * base[1]
    ratio = height / width
    ideal_w, ideal_h = np.sqrt(area / ratio), np.sqrt(area * ratio)
    return int(np.round(ideal_w / 16)) * 16, int(np.round(ideal_h / 16)) * 16  # halves to even


def _triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of antialiased bilinear resampling along one axis."""
    scale = in_size / out_size
    widen = max(scale, 1.0)  # the filter covers `widen` input pixels each side when shrinking
    centres = (np.arange(out_size) + 0.5) * scale
    distance = (np.arange(in_size)[None, :] + 0.5 - centres[:, None]) / widen
    weights = np.clip(1.0 - np.abs(distance), 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def _reference_preprocess(image: Image.Image, width: int, height: int) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)  # [h, w, 3]
    rows = _triangle_weights(pixels.shape[0], height)
    cols = _triangle_weights(pixels.shape[1], width)
    resized = np.stack([rows @ pixels[:, :, c] @ cols.T for c in range(3)])
    as_uint8 = np.clip(np.rint(resized), 0, 255)
    return (as_uint8 / 255.0 - 0.5) / 0.5


def _noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / (width - 1), 255 * y / (height - 1), 127 + 120 * np.sin(x / 7.0 + y / 11.0)], -1)
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


def _shapes(width: int, height: int) -> Image.Image:
    img = _gradient(width, height)
    img.paste(Image.new("RGB", (width // 3, height // 4), (250, 10, 40)), (width // 5, height // 3))
    img.paste(Image.new("RGB", (width // 9 + 1, height // 2), (0, 0, 0)), (width // 2, height // 6))
    for x in range(0, width, 4):  # one-pixel stripes: the case antialiasing exists for
        img.paste((255, 255, 255), (x, 0, x + 1, height // 8))
    return img


CASES = [
    # image, resolution, adaptive
    (_noise(1000, 563, 0), "480p", False),  # shrink by 1.2x in each direction, fixed 16:9
    (_gradient(1920, 1080), "720p", False),  # the common photo shape, 1.5x
    (_shapes(640, 490), "720p", True),  # enlarging; ideal height 840 = 52.5 x 16, a tie that rounds to even
    (_shapes(777, 1234), "480p", True),  # portrait, odd sizes
    (_noise(3000, 1000, 1), "480p", True),  # a strong shrink (about 4.3x), very wide
]


@pytest.mark.parametrize(("image", "resolution", "adaptive"), CASES)
def test_default_preprocessing_matches_the_reference_steps(image: Image.Image, resolution: str, adaptive: bool) -> None:
    width, height = target_size(A14B, image.size, resolution, adaptive)
    if adaptive:
        assert (width, height) == _reference_size(image.size, A14B.resolutions[resolution])
    ours = preprocess_image(image, width, height).numpy().astype(np.float64)
    expected = _reference_preprocess(image, width, height)
    assert ours.shape == expected.shape == (3, height, width)
    assert ours.min() >= -1.0 and ours.max() <= 1.0
    # compared on the [0, 1] pixel scale the reference's ToDtype gives, before its normalisation
    diff = np.abs((ours + 1) / 2 - (expected + 1) / 2)
    assert diff.max() <= 1 / 255 + 1e-6, diff.max() * 255
    # Most values are the same uint8 level; the rest differ by one, mostly where torch's uint8 kernel rounds between
    # its horizontal and vertical passes (torchvision takes that kernel on AVX2 CPUs, as the reference runs it).
    assert (diff < 0.5 / 255).mean() > 0.8


def test_adaptive_size_rounds_halves_to_even() -> None:
    # 640x490 at 720p: the ideal height is exactly 840 = 52.5 x 16; the reference's round() gives 52 -> 832
    # (rounding halves up would give 848). The width, 1097.1, rounds to 69 x 16 = 1104.
    assert _reference_size((640, 490), (1280, 720)) == (1104, 832)
    assert target_size(A14B, (640, 490), "720p", adaptive=True) == (1104, 832)
    assert target_size(A14B, (490, 640), "720p", adaptive=True) == (832, 1104)


@pytest.mark.parametrize("size", [(1920, 1080), (1000, 1000), (123, 457), (4096, 300), (1366, 768)])
@pytest.mark.parametrize("resolution", ["480p", "720p"])
def test_adaptive_sizes_are_the_reference_formula(size: tuple[int, int], resolution: str) -> None:
    assert target_size(A14B, size, resolution, adaptive=True) == _reference_size(size, A14B.resolutions[resolution])


def test_value_range_ends_are_exact() -> None:
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    out = preprocess_image(img, 32, 16)
    assert torch.equal(out[0], torch.full((16, 32), -1.0)) and torch.equal(out[1], torch.full((16, 32), 1.0))
