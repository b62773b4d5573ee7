"""Pictures made on the spot with Pillow for the bad-input tests (no files on disk, no network)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid(colour=(200, 40, 40), size=(96, 96), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def halves(size=(160, 80), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: shows which way an image was turned."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def noise_png(size=(128, 128), seed=0) -> bytes:
    """Incompressible PNG, for size-limit tests."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries one tiny IDAT: what a decompression bomb looks like
    to a server that trusts the header (a real bomb is a few KB of zlib that inflates to gigabytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated(fmt: str, colours=((255, 0, 0), (0, 255, 0), (0, 0, 255)), size=(96, 96)) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    params = {"save_all": True, "append_images": frames[1:], "duration": 100, "loop": 0}
    if fmt == "WEBP":
        params["lossless"] = True
    return encode(frames[0], fmt, **params)


def with_orientation(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation tag
    return encode(image, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
