"""The uploaded image: decoded for real, checked against the size, pixel and shape limits, and normalised.

Every upload goes through `normalise_upload` before anything is stored or queued. What comes out is an upright,
fully decoded 8-bit sRGB image with no metadata, so the stored `inputs/<user>/<job>.png` is the same picture the
model sees whatever the camera, editor or client produced. Decisions (docs/hardening.md has the full table):

- The decoder decides what a file is; the client's content type and file name are never trusted or used.
- Animated GIF/WebP/PNG: the first frame is used (a still is what image-to-video needs; rejecting would only
  make people re-export the same frame).
- Transparency (alpha channel, palette or tRNS transparency) is composited on white, as the pipeline does.
- 16-bit greyscale is scaled down to 8 bits (not clipped); CMYK and images with an ICC profile are converted to
  sRGB through the profile when there is one.
- The EXIF orientation is applied, so a phone photo comes out the way it was held.
- Larger than any output needs (`max_short_side`, from the largest resolution of any model): shrunk right after
  decoding, before any other step, and stored that size. JPEGs decode at 1/2, 1/4 or 1/8 scale straight away
  (Pillow's draft mode), so a 24-megapixel photo never exists at full size in memory.
- At most TURBO_IMAGE_DECODE_SLOTS images decode at once per process: a few small files that declare huge images
  cannot multiply the memory a full-size decode takes.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import numpy as np
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Formats a browser or phone produces for a still photo. MPO is how Pillow names many camera JPEGs (a JPEG with
# extra preview frames). Everything else (TIFF, PSD, ICO, EPS, ...) is refused: each extra decoder is attack surface.
ACCEPTED_FORMATS: Final = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP"})

DECODE_WAIT_S: Final = 20.0  # a request waits this long for a decode slot before it is told to come back

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES: Final = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_GREY_MODES: Final = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


class ImageRejected(ValueError):
    """An upload that cannot be used. `message` is for the person who sent it; `code` is stable for programs."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class DecoderBusy(RuntimeError):
    """Every decode slot of this process stayed taken for DECODE_WAIT_S: the server is busy, not the image bad."""


_slots_lock = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None


@contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the process's TURBO_IMAGE_DECODE_SLOTS while decoding; DecoderBusy after DECODE_WAIT_S."""
    global _slots
    count = max(1, int(settings.TURBO_IMAGE_DECODE_SLOTS))
    with _slots_lock:
        if _slots is None or _slots[0] != count:
            _slots = (count, threading.BoundedSemaphore(count))
        semaphore = _slots[1]
    if not semaphore.acquire(timeout=DECODE_WAIT_S):
        raise DecoderBusy(f"no image decode slot free within {DECODE_WAIT_S:g} s")
    try:
        yield
    finally:
        semaphore.release()


def limits() -> dict[str, float]:
    """The limits in force (from settings), for error messages, the API schema and the pages."""
    return {
        "max_upload_bytes": int(settings.TURBO_MAX_UPLOAD_BYTES),
        "max_image_pixels": int(settings.TURBO_MAX_IMAGE_PIXELS),
        "min_image_side": int(settings.TURBO_MIN_IMAGE_SIDE),
        "max_aspect_ratio": float(settings.TURBO_MAX_ASPECT_RATIO),
    }


def normalise_upload(upload: UploadedFile, *, max_short_side: int | None = None) -> Image.Image:
    """Decode `upload` and return it as an upright RGB image, or raise ImageRejected saying what is wrong.
    With `max_short_side`, an image whose shorter side is longer comes out shrunk to it (aspect kept)."""
    limit = limits()
    data = _read_bounded(upload, int(limit["max_upload_bytes"]))
    return normalise_bytes(data, max_short_side=max_short_side)


def normalise_bytes(data: bytes, *, max_short_side: int | None = None) -> Image.Image:
    """`normalise_upload` for bytes already in memory (the size limit is checked here too)."""
    limit = limits()
    _check_byte_size(len(data), int(limit["max_upload_bytes"]))
    with decode_slot():
        image = _open(data, int(limit["max_image_pixels"]))
        _check_dimensions(image.size, limit)
        if max_short_side:
            _draft(image, max_short_side)
        _decode(image)
        if max_short_side:
            image = _shrink(image, max_short_side)
        image = _upright(image)
        return _to_srgb(image)


# -- steps ----------------------------------------------------------------------------------------------------


def _read_bounded(upload: UploadedFile, max_bytes: int) -> bytes:
    # `size` is what the upload handler counted; it may exceed what it kept (turbosite.security caps storage).
    declared = getattr(upload, "size", None)
    if declared is not None:
        _check_byte_size(int(declared), max_bytes)
    upload.seek(0)
    data = upload.read(max_bytes + 1)
    _check_byte_size(len(data), max_bytes)
    return data


def _check_byte_size(size: int, max_bytes: int) -> None:
    if size == 0:
        raise ImageRejected("The image file is empty (0 bytes).", "empty")
    if size > max_bytes:
        raise ImageRejected(
            f"The image file is {_megabytes(size)}; the limit is {_megabytes(max_bytes)}.", "too_large")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow refuses from the header alone when it claims more than twice Image.MAX_IMAGE_PIXELS.
        raise ImageRejected(
            f"The image is far larger than the limit of {max_pixels / 1e6:g} megapixels ({exc}). "
            "Downscale it and try again.", "too_many_pixels",
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(
            "The file is not an image we can read. Upload a JPEG, PNG, WebP, GIF or BMP picture.", "not_image",
        ) from exc
    if image.format not in ACCEPTED_FORMATS:
        raise ImageRejected(
            f"{image.format} images are not accepted. Upload a JPEG, PNG, WebP, GIF or BMP picture.",
            "unsupported_format",
        )
    if getattr(image, "is_animated", False):
        # Animated: keep the first frame (see the module docstring).
        image.seek(0)
    return image


def _check_dimensions(size: tuple[int, int], limit: dict[str, float]) -> None:
    """Checked from the header alone, before a single pixel is decoded (decompression bombs stop here)."""
    width, height = size
    pixels = width * height
    max_pixels = int(limit["max_image_pixels"])
    if pixels > max_pixels:
        raise ImageRejected(
            f"The image is {width}x{height} ({pixels / 1e6:.1f} megapixels); the limit is "
            f"{max_pixels / 1e6:g} megapixels. Downscale it and try again.", "too_many_pixels",
        )
    min_side = int(limit["min_image_side"])
    if min(width, height) < min_side:
        raise ImageRejected(
            f"The image is {width}x{height}; both sides must be at least {min_side} pixels.", "too_small")
    max_ratio = float(limit["max_aspect_ratio"])
    ratio = max(width, height) / min(width, height)
    if ratio > max_ratio:
        raise ImageRejected(
            f"The image is {width}x{height}, an aspect ratio of {ratio:.1f}:1; the most we accept is "
            f"{max_ratio:g}:1. Crop it closer to the video's shape.", "aspect_ratio",
        )


def _decode(image: Image.Image) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"The image is too large to decode safely ({exc}).", "too_many_pixels") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow says "image file is truncated" / "broken data stream" here; LOAD_TRUNCATED_IMAGES stays off.
        raise ImageRejected(
            "The image is damaged or incomplete (the upload may have been cut short). Save it again and retry.",
            "truncated",
        ) from exc


def _scaled(size: tuple[int, int], max_short_side: int) -> tuple[int, int] | None:
    """`size` shrunk so its shorter side is `max_short_side`, or None when it is not larger."""
    width, height = size
    short = min(width, height)
    if short <= max_short_side:
        return None
    scale = max_short_side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def _draft(image: Image.Image, max_short_side: int) -> None:
    """JPEG: let the decoder produce the smallest of 1/1, 1/2, 1/4, 1/8 scale that is still at least the size
    wanted (other formats ignore draft)."""
    target = _scaled(image.size, max_short_side)
    if target is not None and image.format in ("JPEG", "MPO"):
        image.draft(None, target)


# Modes whose resize is not a real resampling (palette, 1-bit) or not supported (16-bit greyscale variants).
_RESIZE_AS = {"P": "RGBA", "PA": "RGBA", "1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}


def _shrink(image: Image.Image, max_short_side: int) -> Image.Image:
    target = _scaled(image.size, max_short_side)
    if target is None:
        return image
    if image.mode in _RESIZE_AS or "transparency" in image.info:
        keep = {key: image.info[key] for key in ("icc_profile", "exif") if key in image.info}
        # Transparency by palette entry or colour key becomes an alpha channel that survives resampling.
        image = image.convert("RGBA" if "transparency" in image.info else _RESIZE_AS[image.mode])
        image.info.update(keep)
    info, exif = dict(image.info), image.getexif()
    shrunk = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    shrunk.info.update({key: info[key] for key in ("icc_profile",) if key in info})
    if exif:
        shrunk.info["exif"] = exif.tobytes()  # the orientation is applied next
    return shrunk


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # Broken EXIF should not cost someone their upload; the picture is used as stored.
        logger.info("ignoring unreadable EXIF orientation: %s", exc)
        return image


def _to_srgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if image.mode in _SIXTEEN_BIT_GREY_MODES:
        rgb = _sixteen_bit_grey_to_rgb(image)
    elif image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgb = _on_white(image)
    elif image.mode in ("RGB", "CMYK") and icc:
        rgb = _through_profile(image, icc)
    else:
        rgb = image.convert("RGB")
    # A fresh image: no EXIF, ICC profile or text chunks travel on to storage (they would be re-applied or leak).
    clean = Image.new("RGB", rgb.size)
    clean.paste(rgb)
    return clean


def _sixteen_bit_grey_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's own convert("RGB") clips these to 255 (a white picture); scale the 16-bit range down instead.
    values = np.asarray(image).astype(np.float64)
    grey = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _through_profile(image: Image.Image, icc: bytes) -> Image.Image:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        srgb = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        logger.info("ignoring unusable ICC profile: %s", exc)
        return image.convert("RGB")
    assert converted is not None  # inPlace=False always returns the new image
    return converted


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB" if size >= 1024 * 1024 / 10 else f"{max(1, math.ceil(size / 1024))} KB"
