"""Input image handling: upright RGB, output sizes, preprocessing to [-1, 1], frame-count rule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from PIL import Image

from inference.configs import A14B, TINY
from inference.image import load_image, preprocess_image, target_size, validate_num_frames
from inference.types import InferenceInputError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _exif_rotated_jpeg() -> bytes:
    """Stored 60x30 landscape, red on the left, blue on the right; EXIF 6 says 'rotate 90 degrees clockwise'."""
    img = Image.new("RGB", (60, 30), BLUE)
    img.paste(Image.new("RGB", (30, 30), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _close(pixel: tuple[int, ...], colour: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, colour, strict=True))


@pytest.mark.parametrize("kind", ["bytes", "path", "pil"])
def test_exif_rotated_image_comes_out_upright(kind: str, tmp_path) -> None:
    data = _exif_rotated_jpeg()
    if kind == "bytes":
        source = data
    elif kind == "path":
        source = tmp_path / "photo.jpg"
        source.write_bytes(data)
    else:
        source = Image.open(io.BytesIO(data))
    image = load_image(source)
    assert image.mode == "RGB"
    assert image.size == (30, 60)  # portrait once turned
    # Turning clockwise puts the stored left edge (red) at the top.
    assert _close(image.getpixel((15, 5)), RED)
    assert _close(image.getpixel((15, 55)), BLUE)


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    out = load_image(img)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (10, 20, 30)


def test_unreadable_bytes_raise_inference_input_error() -> None:
    with pytest.raises(InferenceInputError, match="cannot read image bytes"):
        load_image(b"not an image at all")


@pytest.mark.parametrize(
    ("config", "image_size", "resolution", "expected"),
    [
        (A14B, (1920, 1080), "720p", (1280, 720)),
        (A14B, (1080, 1920), "720p", (720, 1280)),
        (A14B, (1000, 600), "480p", (832, 480)),
        (A14B, (600, 1000), "480p", (480, 832)),
        (A14B, (1000, 1000), "480p", (640, 640)),
        (A14B, (1000, 1000), "720p", (960, 960)),
        (A14B, (1100, 1000), None, (960, 960)),  # default resolution is 720p
        (TINY, (300, 200), None, (160, 96)),  # 3:2 is closer to 16:9 than to 1:1
        (TINY, (200, 200), "720p", (192, 192)),
    ],
)
def test_fixed_sizes(config, image_size, resolution, expected) -> None:
    size = target_size(config, image_size, resolution, adaptive=False)
    assert size == expected
    assert size[0] % 16 == 0 and size[1] % 16 == 0


@pytest.mark.parametrize("config", [A14B, TINY])
@pytest.mark.parametrize("resolution", ["480p", "720p"])
@pytest.mark.parametrize("image_size", [(1920, 1080), (1080, 1920), (1024, 768), (3000, 1000), (777, 1234), (512, 512)])
def test_adaptive_sizes_keep_area_and_aspect(config, resolution, image_size) -> None:
    width, height = target_size(config, image_size, resolution, adaptive=True)
    assert width % 16 == 0 and height % 16 == 0
    base_w, base_h = config.resolutions[resolution]
    # Rounding each side by at most 8 pixels bounds the errors.
    assert abs(width * height - base_w * base_h) <= 8 * (width + height) + 64
    aspect = image_size[0] / image_size[1]
    assert abs(math.log((width / height) / aspect)) <= math.log((1 + 8 / width) * (1 + 8 / height)) + 1e-9


def test_adaptive_sizes_match_named_ones_for_their_own_aspect() -> None:
    assert target_size(A14B, (1280, 720), "720p", adaptive=True) == (1280, 720)
    assert target_size(A14B, (480, 832), "480p", adaptive=True) == (480, 832)


def test_unknown_resolution_is_named() -> None:
    with pytest.raises(InferenceInputError, match=r"'1080p'.*480p, 720p"):
        target_size(A14B, (100, 100), "1080p", adaptive=True)


def test_preprocess_scales_to_minus_one_one() -> None:
    out = preprocess_image(Image.new("RGB", (50, 40), (255, 0, 128)), 32, 16)
    assert out.shape == (3, 16, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 5, 5], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]))
    assert out.min() >= -1 and out.max() <= 1


def _three_bands() -> Image.Image:
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste(Image.new("RGB", (100, 100), (0, 255, 0)), (100, 0))
    img.paste(Image.new("RGB", (100, 100), (0, 0, 255)), (200, 0))
    return img


RED_T, GREEN_T, BLUE_T, BLACK_T = (torch.tensor(c, dtype=torch.float32).view(3, 1, 1)
                                   for c in ([1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0] * 3))


def test_preprocess_crop_mode_centre_crops_to_the_target_aspect() -> None:
    # Three vertical bands; a square target keeps only the middle (green) one.
    out = preprocess_image(_three_bands(), 32, 32, resize_mode="crop")
    torch.testing.assert_close(out, GREEN_T.expand(3, 32, 32), atol=0, rtol=0)


def test_preprocess_stretch_mode_keeps_the_whole_image() -> None:
    # The default squeezes all three bands into the square: a third each, blended only where two bands meet.
    out = preprocess_image(_three_bands(), 30, 30)
    torch.testing.assert_close(out[:, :, :9], RED_T.expand(3, 30, 9), atol=0, rtol=0)
    torch.testing.assert_close(out[:, :, 11:19], GREEN_T.expand(3, 30, 8), atol=0, rtol=0)
    torch.testing.assert_close(out[:, :, 21:], BLUE_T.expand(3, 30, 9), atol=0, rtol=0)


def test_preprocess_pad_mode_letterboxes_on_black() -> None:
    # 300x100 into 60x60: the whole image scaled to 60x20, centred, black above and below.
    out = preprocess_image(_three_bands(), 60, 60, resize_mode="pad")
    torch.testing.assert_close(out[:, :20], BLACK_T.expand(3, 20, 60), atol=0, rtol=0)
    torch.testing.assert_close(out[:, 40:], BLACK_T.expand(3, 20, 60), atol=0, rtol=0)
    torch.testing.assert_close(out[:, 20:40, :19], RED_T.expand(3, 20, 19), atol=0, rtol=0)
    torch.testing.assert_close(out[:, 20:40, 21:39], GREEN_T.expand(3, 20, 18), atol=0, rtol=0)
    torch.testing.assert_close(out[:, 20:40, 41:], BLUE_T.expand(3, 20, 19), atol=0, rtol=0)


def test_unknown_resize_mode_is_named() -> None:
    with pytest.raises(InferenceInputError, match=r"'squash'.*stretch, crop, pad"):
        preprocess_image(_three_bands(), 32, 32, resize_mode="squash")


def test_preprocess_antialiases_when_shrinking() -> None:
    # A one-pixel checkerboard averages to mid grey when shrunk with a filter (a nearest pick would stay 0 or 255).
    board = Image.frombytes("L", (64, 64), bytes(255 * ((x + y) % 2) for y in range(64) for x in range(64)))
    out = preprocess_image(board.convert("RGB"), 16, 16)
    assert out.abs().max() < 0.1


@pytest.mark.parametrize("n", [1, 5, 17, 81, 161])
def test_valid_frame_counts(n: int) -> None:
    validate_num_frames(n, max_frames=161)


@pytest.mark.parametrize(
    ("n", "pattern"), [(0, "4k\\+1.*got 0"), (2, "4k\\+1.*got 2"), (80, "got 80"), (165, "at most 161, got 165")]
)
def test_invalid_frame_counts_are_named(n: int, pattern: str) -> None:
    with pytest.raises(InferenceInputError, match=pattern):
        validate_num_frames(n, max_frames=161)


def test_non_integer_frame_count_is_refused() -> None:
    with pytest.raises(InferenceInputError, match="'81'"):
        validate_num_frames("81", max_frames=161)  # type: ignore[arg-type]
