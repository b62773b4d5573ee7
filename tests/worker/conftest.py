"""Worker fixtures: a fake pipeline honouring inference/types.py's contract, and queued jobs with stored inputs."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from generation import worker
from generation.models import Job
from inference.types import GenerationCanceled, GenerationRequest, GenerationResult, ProgressEvent
from tests.factories import FAST_PASSWORD_HASHERS, delete_job_files, png_bytes, stored_job
from tests.s3server import hung_s3, own_s3  # noqa: F401  (for the tests that freeze a storage server)

FAKE_DEVICE = "Fake GPU 80GB"
FAKE_SIZE = (48, 32)  # width, height of the fake frames


@dataclass
class FakePipeline:
    """Walks the same stages as the real pipeline, checks cancellation before each, announces each as it starts
    (as the real one does), and returns seeded frames.

    `on_step(step)` runs after each denoising step (tests cancel, requeue or sleep there); `fail_at` raises the given
    exception when that stage starts; `on_work(stage, fraction)` runs while a stage works, after its events (the
    start of each stage, and each of the `decode_chunks` chunks of the decode).
    """

    model: str
    step_delay: float = 0.0
    on_step: Callable[[int], None] | None = None
    on_work: Callable[[str, float], None] | None = None
    decode_chunks: int = 1
    fail_at: tuple[str, BaseException] | None = None
    requests: list[GenerationRequest] = field(default_factory=list)
    steps_run: int = 0
    device_name: str = FAKE_DEVICE

    def _stage(self, name: str, should_cancel: Callable[[], bool] | None) -> None:
        if should_cancel is not None and should_cancel():
            raise GenerationCanceled(f"canceled before {name}")
        if self.fail_at is not None and self.fail_at[0] == name:
            raise self.fail_at[1]

    def _work(self, stage: str, fraction: float = 0.0) -> None:
        if self.on_work is not None:
            self.on_work(stage, fraction)

    def generate(self, request: GenerationRequest, progress: Callable[[ProgressEvent], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> GenerationResult:
        self.requests.append(request)
        emit = progress or (lambda event: None)
        self._stage("text_encode", should_cancel)
        emit(ProgressEvent(stage="text_encode", progress=0.0, fraction=0.0))
        self._work("text_encode")
        self._stage("image_encode", should_cancel)
        emit(ProgressEvent(stage="image_encode", progress=0.05, fraction=0.0))
        self._work("image_encode")
        emit(ProgressEvent(stage="denoise", progress=0.1, step=0, total_steps=request.num_steps))
        self._work("denoise")
        for step in range(1, request.num_steps + 1):
            self._stage("denoise", should_cancel)
            time.sleep(self.step_delay)
            self.steps_run += 1
            emit(ProgressEvent(stage="denoise", progress=0.1 + 0.8 * step / request.num_steps, step=step,
                               total_steps=request.num_steps))
            if self.on_step is not None:
                self.on_step(step)
        self._stage("decode", should_cancel)
        emit(ProgressEvent(stage="decode", progress=0.9, fraction=0.0))
        self._work("decode", 0.0)
        for chunk in range(1, self.decode_chunks + 1):
            emit(ProgressEvent(stage="decode", progress=0.9 + 0.08 * chunk / self.decode_chunks,
                               fraction=chunk / self.decode_chunks))
            self._work("decode", chunk / self.decode_chunks)
        rng = np.random.default_rng(request.seed)
        width, height = FAKE_SIZE
        frames = rng.integers(0, 256, size=(request.num_frames or 17, height, width, 3), dtype=np.uint8)
        emit(ProgressEvent(stage="done", progress=1.0))
        return GenerationResult(frames=frames, fps=16, timings={"text_encode": 0.01, "denoise": 0.02, "decode": 0.01},
                                device_name=self.device_name)


@dataclass
class FakeConfig:
    fps: int = 16


@dataclass
class StreamingFakePipeline(FakePipeline):
    """FakePipeline that, like the real one, hands each "decoded" chunk (1 frame, then 4 at a time) to
    `frame_sink` before returning; `on_chunk(index)` runs after each chunk is handed over."""

    config: FakeConfig = field(default_factory=FakeConfig)
    on_chunk: Callable[[int], None] | None = None
    chunks_sent: int = 0

    def generate(self, request: GenerationRequest, progress: Callable[[ProgressEvent], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 frame_sink: Callable[[np.ndarray], None] | None = None) -> GenerationResult:
        def streaming_progress(event: ProgressEvent) -> None:
            if event.stage == "decode" and event.fraction == 0.0 and frame_sink is not None:
                self._stream(self._frames(request), frame_sink, should_cancel)
            if progress is not None:
                progress(event)

        return super().generate(request, streaming_progress, should_cancel)

    def _frames(self, request: GenerationRequest) -> np.ndarray:
        width, height = FAKE_SIZE
        return np.random.default_rng(request.seed).integers(
            0, 256, size=(request.num_frames or 17, height, width, 3), dtype=np.uint8)

    def _stream(self, frames: np.ndarray, sink: Callable[[np.ndarray], None],
                should_cancel: Callable[[], bool] | None) -> None:
        bounds = [0, *range(1, len(frames), 4), len(frames)]  # 1 frame, then 4 at a time, as the VAE decodes
        for index, (start, end) in enumerate(itertools.pairwise(bounds)):
            sink(frames[start:end])
            self.chunks_sent += 1
            if self.on_chunk is not None:
                self.on_chunk(index)
            if should_cancel is not None and should_cancel():
                raise GenerationCanceled("canceled while decoding")


@dataclass
class FakeLoader:
    pipelines: dict[str, FakePipeline] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    error: BaseException | None = None
    options: dict[str, Any] = field(default_factory=dict)
    streaming: bool = False  # build StreamingFakePipeline (generate takes frame_sink)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, model: str) -> FakePipeline:
        with self.lock:
            self.loads.append(model)
            if self.error is not None:
                raise self.error
            pipeline = (StreamingFakePipeline if self.streaming else FakePipeline)(model, **self.options)
            self.pipelines[model] = pipeline
            return pipeline

    def pipeline(self, model: str = "tiny") -> FakePipeline:
        return self.pipelines[model]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    """The `user` fixture hashes a password; the slow production hasher adds nothing to worker tests."""
    settings.PASSWORD_HASHERS = FAST_PASSWORD_HASHERS


@pytest.fixture
def fake_loader() -> Iterator[FakeLoader]:
    loader = FakeLoader()
    worker.set_pipeline_loader(loader)
    yield loader
    worker.set_pipeline_loader(None)


@pytest.fixture
def make_job(user) -> Iterator[Callable[..., Job]]:
    """make_job(**fields) -> a QUEUED job of `user` with its input image stored where the services put it."""
    made: list[Job] = []

    def make(*, image: bytes | None = None, **fields: Any) -> Job:
        job = stored_job(fields.pop("owner", user), image=image or png_bytes(64, 48),
                         **({"seed": 1234, "num_frames": 5} | fields))
        made.append(job)
        return job

    yield make
    delete_job_files(made)
