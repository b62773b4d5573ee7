"""Turning decoded frames into files: uint8 frames, an H.264 mp4 that starts playing before it has fully
downloaded (+faststart), a poster image, and a probe that decodes a file back (for checks and tests)."""

from __future__ import annotations

import contextlib
import os
import queue
import struct
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

DEFAULT_FPS = 16
# x264 constant quality: visually lossless for generated video at a modest size.
DEFAULT_CRF = 18
# x264 speed preset: encode time is part of every job's latency, and "veryfast" is several times faster than
# "medium" at the same CRF with no larger a file (bench/README.md, "Numbers behind code defaults").
DEFAULT_PRESET = "veryfast"


def _ffmpeg():
    """imageio-ffmpeg, imported on first use: the pipeline must import on GPU hosts whose image lacks it."""
    import imageio_ffmpeg

    return imageio_ffmpeg


def _uint8_pixels(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] on the video's own device (a view, not yet contiguous)."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, F, H, W], got shape {tuple(video.shape)}")
    pixels = ((video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0)


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] (any float dtype, any device) -> uint8 [F, H, W, 3]."""
    return _uint8_pixels(video).contiguous().cpu().numpy()


def frames_to_uint8_into(video: torch.Tensor, out: np.ndarray) -> np.ndarray:
    """frames_to_uint8 written straight into `out` (uint8 [F, H, W, 3], C-contiguous): a caller assembling a long
    video chunk by chunk copies each chunk off the GPU once, into its final place. Returns `out`."""
    pixels = _uint8_pixels(video)
    if out.dtype != np.uint8 or tuple(out.shape) != tuple(pixels.shape) or not out.flags.c_contiguous:
        raise ValueError(f"expected a contiguous uint8 array {tuple(pixels.shape)}, got {out.dtype} {out.shape}")
    torch.from_numpy(out).copy_(pixels)
    return out


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] < 1:
        raise ValueError("a video needs at least one frame")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        # yuv420p stores colour at half resolution in both directions.
        raise ValueError(f"H.264 yuv420p needs even width and height, got {width}x{height}")


class EncodeError(RuntimeError):
    """ffmpeg could not encode the video (it exited with an error, or stopped reading frames)."""


_END = object()  # tells the feeding thread that no more frames come


class Mp4Stream:
    """An H.264 mp4 (libx264, yuv420p, +faststart) encoded while its frames are still being made.

    `write` hands frames to a background thread that feeds an ffmpeg process, so x264 runs on the CPU while the
    caller (the VAE decode) keeps the GPU busy; `finish` waits for the tail and renames the file into place. Until
    then the video lives under a temporary name, so a reader never sees a half-written file, and `abort` (or leaving
    a `with` block by an exception) kills ffmpeg and deletes it.

    At most `max_pending_frames` frames wait for ffmpeg: a producer faster than the encoder blocks in `write`
    rather than piling up frames. Waiting frames are references to the caller's arrays, not copies: don't modify
    an array after writing it. One producer thread at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: int = DEFAULT_FPS,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        max_pending_frames: int = 16,
    ) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        self.fps = fps
        self.crf = crf
        self.preset = preset
        self.size: tuple[int, int] | None = None  # (width, height), from the first frames
        self.frames_written = 0  # accepted by write (not necessarily encoded yet)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, max_pending_frames))
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._state = "open"  # -> "finished" | "aborted"

    # -- producer side -------------------------------------------------------------------------------------------

    def write(self, frames: np.ndarray) -> None:
        """Queue uint8 RGB frames [n, H, W, 3] (every call the same H and W); blocks while the queue is full.
        Raises EncodeError at once if ffmpeg has already failed, so the producer can stop early."""
        if self._state != "open":
            raise RuntimeError(f"write to an mp4 stream that is {self._state}")
        if frames.ndim == 4 and frames.shape[0] == 0 and frames.dtype == np.uint8:
            return
        _check_frames(frames)
        height, width = frames.shape[1:3]
        if self.size is None:
            self._start(width, height)
        elif self.size != (width, height):
            raise ValueError(f"frames of {width}x{height} written to a {self.size[0]}x{self.size[1]} mp4 stream")
        for frame in frames:
            self._raise_if_failed()
            if self._state != "open":  # aborted from another thread meanwhile: nobody would take the frame
                raise RuntimeError("write to an mp4 stream that was aborted")
            self._queue.put(np.ascontiguousarray(frame))
            self.frames_written += 1

    def finish(self) -> Path:
        """Wait for ffmpeg to encode every written frame, then move the file to `path` and return it.
        Raises EncodeError (after deleting the partial file) if encoding failed."""
        if self._state == "finished":
            return self.path
        if self._state == "aborted":
            raise RuntimeError("finish on an aborted mp4 stream")
        if self._process is None:
            self.abort()
            raise ValueError("a video needs at least one frame")
        try:
            self._stop_thread()
            process = self._process
            assert process.stdin is not None
            try:
                process.stdin.close()  # end of input: ffmpeg flushes the encoder and writes the index
            except OSError as exc:  # ffmpeg died with unread input in the pipe
                self._error = self._error or exc
            returncode = process.wait()
            if self._error is None and returncode != 0:
                self._error = EncodeError(f"ffmpeg exited with status {returncode}")
            self._raise_if_failed()
            os.replace(self.partial, self.path)
        except BaseException:
            self.abort()
            raise
        self._close_stderr()
        self._state = "finished"
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg without waiting for it and delete the partial file. Safe to call more than once, and a no-op
        after a successful finish (the finished file is the caller's)."""
        if self._state != "open":
            return
        self._state = "aborted"
        if self._process is not None:
            # Killed first: a feeding thread blocked writing to a full pipe then fails at once instead of waiting
            # for x264 to catch up.
            self._process.kill()
            self._stop_thread()
            self._process.wait()
            if self._process.stdin is not None:
                with contextlib.suppress(OSError):  # a broken pipe: ffmpeg is gone, which is the point
                    self._process.stdin.close()
        self._close_stderr()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.finish()

    # -- internals -----------------------------------------------------------------------------------------------

    def _start(self, width: int, height: int) -> None:
        command = [
            _ffmpeg().get_ffmpeg_exe(), "-hide_banner", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(self.fps), "-i", "-",
            "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf), "-preset", self.preset,
            "-movflags", "+faststart", "-v", "error", "-f", "mp4", str(self.partial),
        ]
        # ffmpeg's messages go to a file, not a pipe: nobody reads a pipe while frames flow, and a full one would
        # stall ffmpeg. Read back only to explain a failure.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish or abort)
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
            # Its own process group: a Ctrl-C in a terminal reaches Python, which aborts cleanly, instead of
            # killing ffmpeg under a stream that is still being written.
            start_new_session=True,
        )
        self.size = (width, height)
        self._thread = threading.Thread(target=self._feed, name=f"mp4-{self.path.name}", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._error is not None or self._state == "aborted":
                continue  # keep draining: a producer blocked on a full queue must be let go
            try:
                process.stdin.write(memoryview(item).cast("B"))
            except BaseException as exc:  # a broken pipe (ffmpeg died) or anything else: finish reports it
                self._error = exc

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(_END)
            self._thread.join()
            self._thread = None

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is not None:
            detail = str(error) if isinstance(error, EncodeError) else f"{type(error).__name__}: {error}"
            raise EncodeError(f"encoding {self.path.name} failed: {detail}{self._ffmpeg_says()}") from error

    def _ffmpeg_says(self) -> str:
        if self._stderr is None:
            return ""
        try:
            # pread, not seek + read: ffmpeg shares this file's offset and may still be writing to it.
            fd = self._stderr.fileno()
            size = os.fstat(fd).st_size
            start = max(0, size - 2000)
            text = os.pread(fd, size - start, start).decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return f"; ffmpeg says: {text}" if text else ""

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def write_mp4(
    frames: np.ndarray,
    path: str | os.PathLike[str],
    fps: int = DEFAULT_FPS,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
) -> Path:
    """Encode uint8 [F, H, W, 3] RGB frames as H.264 (libx264, yuv420p) with the index (moov) at the front.

    The whole-video case of Mp4Stream: written to a temporary name first and renamed, so a reader never sees a
    half-written file.
    """
    _check_frames(frames)
    with Mp4Stream(path, fps, crf=crf, preset=preset) as stream:
        stream.write(frames)
        return stream.finish()


def write_poster(frame: np.ndarray, path: str | os.PathLike[str], format: str = "JPEG") -> Path:
    """One uint8 [H, W, 3] frame as a JPEG (quality 90) or PNG image."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame [H, W, 3], got {frame.dtype} {frame.shape}")
    fmt = format.upper()
    if fmt not in ("JPEG", "PNG"):
        raise ValueError(f"poster format must be JPEG or PNG, got {format!r}")
    path = Path(path)
    options = {"quality": 90, "optimize": True} if fmt == "JPEG" else {"optimize": True}
    Image.fromarray(frame, mode="RGB").save(path, format=fmt, **options)
    return path


def probe_video(path: str | os.PathLike[str]) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) of a video file, counting frames by decoding them all."""
    reader = _ffmpeg().read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    width, height = meta["size"]
    return count, int(width), int(height), float(meta["fps"])


def read_frames(path: str | os.PathLike[str]) -> np.ndarray:
    """All frames of a video file as uint8 [F, H, W, 3] RGB."""
    reader = _ffmpeg().read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames)


def mp4_top_level_boxes(path: str | os.PathLike[str]) -> list[str]:
    """Names of the top-level boxes of an MP4 file in file order (e.g. ftyp, moov, mdat when fast-started)."""
    names: list[str] = []
    with open(path, "rb") as f:
        size_total = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 8 <= size_total:
            f.seek(offset)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:  # 64-bit size follows the type
                (size,) = struct.unpack(">Q", f.read(8))
            elif size == 0:  # box runs to the end of the file
                size = size_total - offset
            if size < 8:
                raise ValueError(f"{path}: malformed MP4 box at byte {offset}")
            names.append(kind.decode("latin-1"))
            offset += size
    return names
