"""The worker encodes the mp4 while the pipeline decodes (frame_sink into an Mp4Stream), and every way a job can
end early leaves no partial video behind and no ffmpeg running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from generation import storage, worker
from generation.models import Job
from inference.video import Mp4Stream, probe_video, read_frames
from tests.worker.conftest import FAKE_SIZE, FakePipeline, StreamingFakePipeline

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def streams(monkeypatch) -> list[Mp4Stream]:
    """Every Mp4Stream the worker opens, to look at after the job."""
    opened: list[Mp4Stream] = []
    real_open = worker._open_stream

    def recording_open(pipeline: Any, video_path: Path) -> Mp4Stream | None:
        stream = real_open(pipeline, video_path)
        if stream is not None:
            opened.append(stream)
        return stream

    monkeypatch.setattr(worker, "_open_stream", recording_open)
    return opened


def _gone(stream: Mp4Stream) -> bool:
    """Aborted, ffmpeg dead, and no file under either name (the job's temporary folder is gone too)."""
    process = stream._process
    return (stream._state == "aborted" and (process is None or process.poll() is not None)
            and not stream.partial.exists() and not stream.path.exists() and not stream.path.parent.exists())


def _stored_video(job: Job, folder: Path) -> Path:
    path = folder / f"{job.id}.mp4"
    path.write_bytes(storage.read_bytes(job.output_video.name))
    return path


def test_streaming_pipeline_encodes_during_generate_and_the_mp4_holds_its_frames(make_job, fake_loader, streams, tmp_path):
    fake_loader.streaming = True
    job = make_job(num_frames=9, num_steps=2, seed=5)
    stages_at_chunk: list[str] = []
    fake_loader.options = {"on_chunk": lambda index: stages_at_chunk.append(
        Job.objects.values_list("stage", flat=True).get(id=job.id))}

    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED

    job.refresh_from_db()
    pipeline = fake_loader.pipeline()
    assert isinstance(pipeline, StreamingFakePipeline) and pipeline.chunks_sent == 3  # 1 + 4 + 4 frames
    assert len(streams) == 1 and streams[0]._state == "finished" and streams[0].frames_written == 9
    assert "encoding" not in stages_at_chunk  # the frames went to ffmpeg before the encoding stage began
    path = _stored_video(job, tmp_path)
    assert probe_video(path) == (9, *FAKE_SIZE, 16.0) and job.bytes == path.stat().st_size
    assert job.progress == 1.0 and job.stage == "done"
    for key in ("decode", "encode", "upload", "total"):
        assert job.timings[key] >= 0, key


def test_streamed_mp4_equals_the_one_written_after_generate(make_job, fake_loader, streams, tmp_path):
    videos = []
    for streaming in (False, True):
        fake_loader.streaming = streaming
        worker.clear_pipelines()
        job = make_job(num_frames=13, seed=9)
        assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
        job.refresh_from_db()
        videos.append(read_frames(_stored_video(job, tmp_path)))
    assert len(streams) == 1  # only the streaming pipeline got a stream
    assert np.array_equal(videos[0], videos[1])


def test_pipeline_without_frame_sink_still_gets_its_mp4(make_job, fake_loader, streams, tmp_path):
    job = make_job(num_frames=5)
    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
    assert streams == [] and type(fake_loader.pipeline()) is FakePipeline
    job.refresh_from_db()
    assert probe_video(_stored_video(job, tmp_path))[:3] == (5, *FAKE_SIZE)


def test_cancel_while_decoding_aborts_the_stream_and_keeps_nothing(make_job, fake_loader, streams):
    fake_loader.streaming = True
    job = make_job(num_frames=13)

    def user_cancels(index: int) -> None:
        if index == 1:
            Job.objects.get(id=job.id).cancel()

    fake_loader.options = {"on_chunk": user_cancels}
    assert worker.execute_job(str(job.id)) == Job.Status.CANCELED
    assert fake_loader.pipeline().chunks_sent == 2
    assert len(streams) == 1 and streams[0].frames_written == 5 and _gone(streams[0])
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELED and job.output_video.name == ""
    assert not storage.default_storage.exists(storage.output_name(job))


def test_cancel_after_generate_aborts_the_stream_before_its_tail(make_job, fake_loader, streams, monkeypatch):
    fake_loader.streaming = True
    job = make_job(num_frames=9)
    real_set_stage = worker._Run.set_stage

    def cancel_at_encoding(run: worker._Run, stage: str) -> None:
        if stage == "encoding":
            Job.objects.get(id=job.id).cancel()
        real_set_stage(run, stage)

    monkeypatch.setattr(worker._Run, "set_stage", cancel_at_encoding)
    assert worker.execute_job(str(job.id)) == Job.Status.CANCELED
    assert len(streams) == 1 and streams[0].frames_written == 9 and _gone(streams[0])
    assert not storage.default_storage.exists(storage.output_name(job))


def test_pipeline_failure_mid_decode_aborts_the_stream(make_job, fake_loader, streams):
    fake_loader.streaming = True

    def decoder_breaks(index: int) -> None:
        if index == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    fake_loader.options = {"on_chunk": decoder_breaks}
    job = make_job(num_frames=13)
    assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    assert "illegal memory access" in job.error_detail and "illegal memory access" not in job.error
    assert job.error.startswith("The video could not be made: something went wrong on the server")
    assert len(streams) == 1 and _gone(streams[0])
    assert not storage.default_storage.exists(storage.output_name(job))


def test_encoder_dying_fails_the_job_with_ffmpegs_reason(make_job, fake_loader, streams):
    fake_loader.streaming = True

    def ffmpeg_killed(index: int) -> None:
        if index == 0:
            process = streams[0]._process
            assert process is not None
            process.kill()
            process.wait()

    fake_loader.options = {"on_chunk": ffmpeg_killed}
    job = make_job(num_frames=13)
    assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    # The encoder's reason and its temporary path are for operators; the owner reads what happened.
    assert "EncodeError" in job.error_detail and "video.mp4" in job.error_detail
    assert "EncodeError" not in job.error and "video.mp4" not in job.error and "/tmp" not in job.error
    assert len(streams) == 1 and _gone(streams[0])
    assert not storage.default_storage.exists(storage.output_name(job))
    assert job.output_video.name == ""


def test_a_pipeline_that_streams_other_frames_than_it_returns_is_encoded_from_its_result(
        make_job, fake_loader, streams, monkeypatch, tmp_path):
    fake_loader.streaming = True
    monkeypatch.setattr(StreamingFakePipeline, "_stream",
                        lambda self, frames, sink, should_cancel: sink(frames[:1]))
    job = make_job(num_frames=9)
    assert worker.execute_job(str(job.id)) == Job.Status.SUCCEEDED
    job.refresh_from_db()
    assert streams[0]._state == "aborted"
    assert probe_video(_stored_video(job, tmp_path))[0] == 9


def test_frame_sink_is_detected_from_the_signature():
    class Keywords:
        config = type("Config", (), {"fps": 16})()

        def generate(self, request, progress=None, should_cancel=None, **options):
            raise AssertionError

    assert worker._accepts_frame_sink(StreamingFakePipeline("tiny"))
    assert worker._accepts_frame_sink(Keywords())
    assert not worker._accepts_frame_sink(FakePipeline("tiny"))
    assert not worker._accepts_frame_sink(object())
    assert worker._open_stream(FakePipeline("tiny"), Path("unused.mp4")) is None
