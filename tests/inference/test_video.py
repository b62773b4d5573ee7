"""Video output: uint8 conversion, H.264 mp4 with faststart, poster images, decoding back."""

from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from inference.video import (
    frames_to_uint8,
    mp4_top_level_boxes,
    probe_video,
    read_frames,
    write_mp4,
    write_poster,
)


def _moving_gradient(frames: int, height: int, width: int) -> np.ndarray:
    """Smooth content (compresses well, so decoded frames stay close to the originals) that changes every frame."""
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        out[f, ..., 0] = (x * 255 // (width - 1) + 8 * f) % 256
        out[f, ..., 1] = y * 255 // (height - 1)
        out[f, ..., 2] = 128
    return out


def test_frames_to_uint8_maps_range_and_layout() -> None:
    video = torch.zeros(3, 2, 4, 5)
    video[0, 0] = -1.0
    video[1, 0] = 1.0
    video[2, 1] = 3.0  # out of range: clamped
    video[0, 1] = -0.5
    out = frames_to_uint8(video.to(torch.bfloat16))
    assert out.shape == (2, 4, 5, 3) and out.dtype == np.uint8
    assert (out[0, ..., 0] == 0).all() and (out[0, ..., 1] == 255).all() and (out[0, ..., 2] == 128).all()
    assert (out[1, ..., 2] == 255).all() and (out[1, ..., 0] == 64).all()


def test_frames_to_uint8_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match=r"\[3, F, H, W\]"):
        frames_to_uint8(torch.zeros(2, 3, 4, 4))


@pytest.mark.parametrize("fps", [16, 24])
def test_mp4_round_trip(tmp_path, fps: int) -> None:
    frames = _moving_gradient(17, 96, 160)
    path = write_mp4(frames, tmp_path / "out.mp4", fps=fps)
    assert probe_video(path) == (17, 160, 96, float(fps))
    back = read_frames(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4
    assert not list(tmp_path.glob(".*partial*"))  # the temporary name is gone


def test_mp4_is_h264_yuv420p_with_faststart(tmp_path) -> None:
    path = write_mp4(_moving_gradient(9, 64, 64), tmp_path / "fast.mp4")
    meta = next(imageio_ffmpeg.read_frames(str(path)))
    assert meta["codec"] == "h264"
    assert meta["pix_fmt"].startswith("yuv420p")
    boxes = mp4_top_level_boxes(path)
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")


def test_mp4_refuses_odd_sizes_and_bad_arrays(tmp_path) -> None:
    with pytest.raises(ValueError, match="even width and height, got 33x32"):
        write_mp4(np.zeros((1, 32, 33, 3), np.uint8), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match="uint8 frames"):
        write_mp4(np.zeros((1, 32, 32, 3), np.float32), tmp_path / "float.mp4")
    assert not list(tmp_path.iterdir())


def test_png_poster_is_exact(tmp_path) -> None:
    frame = _moving_gradient(1, 48, 80)[0]
    path = write_poster(frame, tmp_path / "poster.png", format="PNG")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (80, 48)
        assert np.array_equal(np.asarray(img.convert("RGB")), frame)


def test_jpeg_poster_is_close(tmp_path) -> None:
    frame = _moving_gradient(1, 48, 80)[0]
    path = write_poster(frame, tmp_path / "poster.jpg")
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.size == (80, 48)
        assert np.abs(np.asarray(img.convert("RGB")).astype(int) - frame).mean() < 4


def test_poster_format_is_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match="JPEG or PNG, got 'GIF'"):
        write_poster(np.zeros((4, 4, 3), np.uint8), tmp_path / "p.gif", format="GIF")


def test_mp4_box_reader_sees_file_order(tmp_path) -> None:
    path = tmp_path / "boxes.mp4"
    # ftyp (16 bytes), mdat (8-byte header + 4), moov (8 bytes): a file written without faststart.
    path.write_bytes(
        (16).to_bytes(4, "big") + b"ftypisom" + b"\0\0\0\0"
        + (12).to_bytes(4, "big") + b"mdat" + b"data"
        + (8).to_bytes(4, "big") + b"moov"
    )  # fmt: skip
    assert mp4_top_level_boxes(path) == ["ftyp", "mdat", "moov"]
