"""Video output: uint8 conversion, H.264 mp4 with faststart, poster images, decoding back."""

from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from inference.video import (
    EncodeError,
    Mp4Stream,
    frames_to_uint8,
    frames_to_uint8_into,
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


def test_frames_to_uint8_into_fills_the_given_array() -> None:
    video = torch.linspace(-1.2, 1.2, 3 * 4 * 6 * 8).reshape(3, 4, 6, 8)
    out = np.zeros((6, 6, 8, 3), np.uint8)
    frames_to_uint8_into(video, out[1:5])
    assert np.array_equal(out[1:5], frames_to_uint8(video))
    assert not out[0].any() and not out[5].any()
    with pytest.raises(ValueError, match="contiguous uint8"):
        frames_to_uint8_into(video, np.zeros((4, 6, 8, 3), np.int16))


def test_stream_in_chunks_equals_write_mp4(tmp_path) -> None:
    frames = _moving_gradient(17, 96, 160)
    whole = write_mp4(frames, tmp_path / "whole.mp4", fps=16)
    # Tiny queue: the writer must block on a full queue and still deliver every frame in order.
    stream = Mp4Stream(tmp_path / "streamed.mp4", fps=16, max_pending_frames=2)
    for a, b in ((0, 1), (1, 9), (9, 9), (9, 17)):  # the VAE's shapes: 1 frame, then chunks (and an empty one)
        stream.write(frames[a:b])
    path = stream.finish()
    assert path == tmp_path / "streamed.mp4"
    assert probe_video(path) == probe_video(whole) == (17, 160, 96, 16.0)
    assert np.array_equal(read_frames(path), read_frames(whole))  # same encoder, same settings: same pictures
    boxes = mp4_top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.mp4", "whole.mp4"]


def test_stream_is_named_partial_until_finished(tmp_path) -> None:
    stream = Mp4Stream(tmp_path / "v.mp4")
    stream.write(_moving_gradient(5, 32, 32))
    assert not (tmp_path / "v.mp4").exists()
    stream.finish()
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    stream.abort()  # after finish: the file is the caller's
    assert (tmp_path / "v.mp4").exists()


def test_abort_kills_ffmpeg_and_leaves_no_file(tmp_path) -> None:
    stream = Mp4Stream(tmp_path / "v.mp4", max_pending_frames=2)
    stream.write(_moving_gradient(9, 64, 64))
    process = stream._process
    stream.abort()
    assert process is not None and process.poll() is not None
    assert not list(tmp_path.iterdir())
    stream.abort()  # idempotent
    with pytest.raises(RuntimeError, match="aborted"):
        stream.write(_moving_gradient(1, 64, 64))
    with pytest.raises(RuntimeError, match="aborted"):
        stream.finish()


def test_context_manager_aborts_on_exception_and_finishes_otherwise(tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt), Mp4Stream(tmp_path / "canceled.mp4") as stream:
        stream.write(_moving_gradient(5, 32, 32))
        raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())
    with Mp4Stream(tmp_path / "done.mp4") as stream:
        stream.write(_moving_gradient(5, 32, 32))
    assert probe_video(tmp_path / "done.mp4")[:3] == (5, 32, 32)
    assert [p.name for p in tmp_path.iterdir()] == ["done.mp4"]


def test_ffmpeg_failure_in_the_feeding_thread_surfaces_from_finish(tmp_path) -> None:
    stream = Mp4Stream(tmp_path / "v.mp4")
    stream.write(_moving_gradient(3, 32, 32))
    stream._process.kill()  # ffmpeg dies under the stream, as on a crash or an OOM kill
    stream._process.wait()
    # The failure shows in a write (once the pipe stops taking frames) or in finish; leaving the block aborts, as
    # the worker's does, so nothing is left behind either way.
    with pytest.raises(EncodeError, match=r"encoding v\.mp4 failed"), stream:
        for _ in range(50):  # the pipe buffers some frames; the failure shows once writing to it fails
            stream.write(_moving_gradient(3, 32, 32))
        stream.finish()
    assert not list(tmp_path.iterdir())


def test_write_error_in_the_feeding_thread_surfaces_to_the_producer(tmp_path, monkeypatch) -> None:
    stream = Mp4Stream(tmp_path / "v.mp4")
    stream.write(_moving_gradient(1, 32, 32))
    feeder = stream._thread

    def broken_write(data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stream._process.stdin, "write", broken_write)
    # The feeder meets the error on the frame already queued (then the next write raises) or on the next one
    # (then finish raises): either way the producer gets it, and leaving the block aborts as the worker's does.
    with pytest.raises(EncodeError, match="No space left on device") as caught, stream:
        stream.write(_moving_gradient(2, 32, 32))
        stream.finish()
    assert isinstance(caught.value.__cause__, OSError)
    assert feeder is not None and not feeder.is_alive()
    assert not list(tmp_path.iterdir())


def test_bad_encoder_settings_fail_with_ffmpegs_reason(tmp_path) -> None:
    stream = Mp4Stream(tmp_path / "v.mp4", preset="no-such-preset")
    with pytest.raises(EncodeError, match=r"ffmpeg exited with status \d+; ffmpeg says: .*preset"):
        stream.write(_moving_gradient(3, 32, 32))
        stream.finish()
    assert not list(tmp_path.iterdir())


def test_stream_refuses_mixed_sizes_and_empty_videos(tmp_path) -> None:
    stream = Mp4Stream(tmp_path / "v.mp4")
    stream.write(_moving_gradient(2, 32, 32))
    with pytest.raises(ValueError, match="32x16 written to a 32x32"):
        stream.write(_moving_gradient(2, 16, 32))
    stream.abort()
    with pytest.raises(ValueError, match="at least one frame"):
        Mp4Stream(tmp_path / "empty.mp4").finish()
    assert not list(tmp_path.iterdir())
