"""Every bad-input row of docs/hardening.md for the image, with pictures generated here."""

from __future__ import annotations

import time

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageCms

from generation.image_input import ImageRejected, normalise_bytes, normalise_upload
from tests import images


def upload(data: bytes, name: str = "photo.png", content_type: str = "image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def rejected(data: bytes, **kwargs) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        normalise_upload(upload(data, **kwargs))
    assert info.value.message == str(info.value) and info.value.message
    return info.value


def pixel(image: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)[xy[1], xy[0]]


def close(actual, expected, tolerance: int = 6) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, dtype=np.int16) - np.asarray(expected)) <= tolerance))


def test_plain_jpeg_comes_back_as_loaded_rgb_of_the_same_size():
    out = normalise_upload(upload(images.encode(images.solid(size=(120, 90)), "JPEG"), "a.jpg", "image/jpeg"))
    assert out.mode == "RGB" and out.size == (120, 90)
    assert close(pixel(out, (60, 45)), (200, 40, 40))
    assert ImageRejected.__mro__[1] is ValueError


def test_not_an_image():
    error = rejected(b"<html><body>definitely not a picture</body></html>" * 20)
    assert error.code == "not_image"
    assert "JPEG, PNG" in error.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt):
    data = images.encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 128, 3), np.uint8)), fmt)
    error = rejected(data[: len(data) // 2])
    assert error.code == "truncated"
    assert "incomplete" in error.message


def test_zero_bytes():
    error = rejected(b"")
    assert error.code == "empty"
    assert "0 bytes" in error.message


def test_over_the_byte_limit(settings):
    data = images.noise_png()
    settings.TURBO_MAX_UPLOAD_BYTES = len(data) - 1
    error = rejected(data)
    assert error.code == "too_large"
    assert "limit" in error.message
    settings.TURBO_MAX_UPLOAD_BYTES = len(data)
    assert normalise_upload(upload(data)).size == (128, 128)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns above its limit; we refuse
def test_over_the_pixel_limit_is_refused_from_the_header_without_decoding():
    # 8000 x 6000 = 48 MP (over our 40, under Pillow's 80 at open): decoding would take 144 MB for nothing.
    # The header-only file would raise "truncated" if anything tried to decode it; it is refused first.
    started = time.perf_counter()
    error = rejected(images.png_header_only(8000, 6000))
    assert time.perf_counter() - started < 1.0
    assert error.code == "too_many_pixels"
    assert "8000x6000 (48.0 megapixels)" in error.message and "limit is 40 megapixels" in error.message


def test_just_over_our_pixel_limit_but_under_pillows_guard(settings):
    # Between our limit and Pillow's: only our own header check stands between the server and the decode.
    settings.TURBO_MAX_IMAGE_PIXELS = 100 * 100 - 1
    error = rejected(images.encode(images.solid(size=(100, 100)), "PNG"))
    assert error.code == "too_many_pixels"
    settings.TURBO_MAX_IMAGE_PIXELS = 100 * 100
    assert normalise_upload(upload(images.encode(images.solid(size=(100, 100)), "PNG"))).size == (100, 100)


def test_pillow_decompression_bomb_error_becomes_a_rejection():
    # Pillow itself raises DecompressionBombError at open for more than twice Image.MAX_IMAGE_PIXELS.
    # 30000 x 30000 = 900 MP: a 2.7 GB decode. Pillow refuses it while reading the header.
    assert Image.MAX_IMAGE_PIXELS == 40_000_000  # settings.py aligns Pillow's guard with TURBO_MAX_IMAGE_PIXELS
    started = time.perf_counter()
    error = rejected(images.png_header_only(30_000, 30_000))
    assert time.perf_counter() - started < 1.0
    assert error.code == "too_many_pixels"
    assert "limit of 40 megapixels" in error.message


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_image_uses_its_first_frame(fmt):
    out = normalise_upload(upload(images.animated(fmt), f"moving.{fmt.lower()}", f"image/{fmt.lower()}"))
    assert out.mode == "RGB" and out.size == (96, 96)
    assert close(pixel(out, (10, 10)), (255, 0, 0))


def test_cmyk_jpeg_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (96, 96), (0, 255, 255, 0))  # full magenta + yellow = red
    data = images.encode(cmyk, "JPEG", quality=95)
    assert Image.open(__import__("io").BytesIO(data)).mode == "CMYK"
    out = normalise_upload(upload(data, "print.jpg", "image/jpeg"))
    assert out.mode == "RGB"
    assert close(pixel(out, (40, 40)), (255, 0, 0), tolerance=10)


def test_cmyk_jpeg_with_an_icc_profile_goes_through_the_profile():
    cmyk = Image.new("CMYK", (96, 96), (0, 0, 0, 0))  # no ink: paper white
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    # An sRGB profile on a CMYK image is a mismatch; the conversion falls back instead of failing the upload.
    out = normalise_upload(upload(images.encode(cmyk, "JPEG", icc_profile=profile), "print.jpg"))
    assert out.mode == "RGB" and close(pixel(out, (5, 5)), (255, 255, 255))


def test_sixteen_bit_greyscale_png_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 128).round().astype(np.uint16), (64, 1))
    source = Image.fromarray(ramp)
    data = images.encode(source, "PNG")
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    out = normalise_upload(upload(data))
    grey = np.asarray(out)[:, :, 0]
    assert grey[0, 0] == 0 and grey[0, -1] == 255
    assert abs(int(grey[0, 64]) - round(ramp[0, 64] / 257)) <= 1  # mid-grey stays mid-grey
    assert np.all(np.diff(grey[0].astype(int)) >= 0)  # monotonic ramp, not clipped to white
    assert (grey[0] == 255).sum() <= 2


def test_sixteen_bit_rgb_png_keeps_its_colours():
    rgb16 = np.zeros((64, 64, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 65535, 32768, 0
    # Pillow cannot build 16-bit RGB from an array; write it with raw PNG chunks instead.
    import struct
    import zlib

    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = normalise_upload(upload(data))
    assert close(pixel(out, (3, 3)), (255, 128, 0), tolerance=1)


def test_palette_png_with_transparency_is_composited_on_white():
    image = Image.new("P", (96, 96), 0)
    image.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    image.paste(1, (0, 0, 48, 96))  # left half green, right half palette index 0 = transparent black
    out = normalise_upload(upload(images.encode(image, "PNG", transparency=0)))
    assert close(pixel(out, (10, 10)), (10, 200, 10))
    assert close(pixel(out, (80, 10)), (255, 255, 255))


def test_half_transparent_rgba_png_is_composited_on_white():
    image = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    image.paste((0, 0, 255, 128), (0, 0, 48, 96))
    out = normalise_upload(upload(images.encode(image, "PNG")))
    assert close(pixel(out, (80, 10)), (255, 255, 255), tolerance=1)  # fully transparent -> white, not black
    assert close(pixel(out, (10, 10)), (127, 127, 255), tolerance=2)  # half blue over white


def test_grey_with_alpha_png_is_composited_on_white():
    image = Image.new("LA", (96, 96), (0, 0))
    out = normalise_upload(upload(images.encode(image, "PNG")))
    assert close(pixel(out, (50, 50)), (255, 255, 255), tolerance=0)


@pytest.mark.parametrize(("orientation", "top_colour", "size"), [
    (1, None, (160, 80)),  # upright: left red, right blue
    (3, None, (160, 80)),  # upside down: left blue, right red after the fix
    (6, (255, 0, 0), (80, 160)),  # rotate 90 clockwise to view: the left half becomes the top
    (8, (0, 0, 255), (80, 160)),  # rotate 90 counter-clockwise: the right half becomes the top
])
def test_exif_rotated_photo_comes_out_upright(orientation, top_colour, size):
    out = normalise_upload(upload(images.with_orientation(images.halves(), orientation), "phone.jpg", "image/jpeg"))
    assert out.size == size
    w, h = size
    if orientation == 1:
        assert close(pixel(out, (10, h // 2)), (255, 0, 0), 40) and close(pixel(out, (w - 10, h // 2)), (0, 0, 255), 40)
    elif orientation == 3:
        assert close(pixel(out, (10, h // 2)), (0, 0, 255), 40) and close(pixel(out, (w - 10, h // 2)), (255, 0, 0), 40)
    else:
        assert close(pixel(out, (w // 2, 10)), top_colour, 40)
    assert "exif" not in out.info and out.getexif().get(0x0112) is None


def test_content_type_that_lies_is_ignored_in_both_directions():
    jpeg = images.encode(images.solid(), "JPEG")
    assert normalise_upload(upload(jpeg, "a.png", "image/png")).size == (96, 96)  # says PNG, is JPEG: accepted
    assert normalise_upload(upload(jpeg, "a.txt", "text/plain")).size == (96, 96)  # says text, is JPEG: accepted
    error = rejected(b"MZ\x90\x00" + b"\0" * 600, name="evil.png", content_type="image/png")  # says PNG, is not
    assert error.code == "not_image"


def test_file_name_with_path_parts_plays_no_part():
    data = images.encode(images.solid(), "PNG")
    for name in ("../../etc/passwd", "/abs/photo.png", "..\\..\\win.png", "a\x00b.png", "x" * 300 + ".png"):
        out = normalise_upload(upload(data, name=name))
        assert out.size == (96, 96) and out.info == {}


def test_unsupported_formats_are_refused_even_when_pillow_reads_them():
    error = rejected(images.encode(images.solid(), "TIFF"), name="scan.tiff", content_type="image/tiff")
    assert error.code == "unsupported_format"
    assert "TIFF" in error.message


@pytest.mark.parametrize(("size", "code"), [((63, 200), "too_small"), ((200, 40), "too_small"),
                                            ((1000, 249), "aspect_ratio"), ((100, 401), "aspect_ratio")])
def test_tiny_and_extreme_shapes_are_refused(size, code):
    error = rejected(images.encode(images.solid(size=size), "PNG"))
    assert error.code == code
    assert f"{size[0]}x{size[1]}" in error.message


@pytest.mark.parametrize("size", [(64, 64), (1000, 250), (250, 1000)])
def test_limits_are_inclusive(size):
    assert normalise_upload(upload(images.encode(images.solid(size=size), "PNG"))).size == size


def test_metadata_does_not_travel_on():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    data = images.encode(images.solid(), "JPEG", icc_profile=profile, exif=exif)
    out = normalise_bytes(data)
    assert out.info == {} and len(out.getexif()) == 0
    assert images.encode(out, "PNG").find(b"iCCP") == -1


def test_broken_exif_does_not_cost_the_upload():
    data = bytearray(images.with_orientation(images.halves(), 6))
    start = data.find(b"Exif\0\0")
    data[start + 6:start + 14] = b"XXXXXXXX"  # garble the TIFF header inside the EXIF block
    out = normalise_upload(upload(bytes(data)))
    assert out.mode == "RGB" and max(out.size) == 160
