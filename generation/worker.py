"""Running one job on this process's GPU: claim, generate, encode, upload, and end SUCCEEDED, FAILED or CANCELED.

The pipeline stays loaded across jobs (one model per process; loading another evicts it). While a job runs, a
heartbeat thread touches its row so the reaper can tell a slow step from a dead worker, progress is written at most
once per TURBO_PROGRESS_WRITE_INTERVAL_MS (and on every stage change), and between steps the pipeline asks
`should_cancel`, which reads the row: CANCELED stops the job, and a row that is no longer ours (the reaper took it
back) makes this worker let go without writing anything.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection
from dramatiq.middleware.shutdown import Shutdown
from dramatiq.middleware.time_limit import TimeLimitExceeded
from PIL import Image

from generation import gpu_readings, loras_catalog, queue, storage
from generation.models import Job, Standing, Worker
from generation.stages import PIPELINE_STAGES, TIMING_KEYS, Stage
from inference.checkpoint import weights_status
from inference.configs import MODELS
from inference.types import GenerationCanceled, GenerationRequest, InferenceInputError, ProgressEvent, WeightsError
from turbosite import broker

if TYPE_CHECKING:
    from inference.video import Mp4Stream

log = logging.getLogger(__name__)

PipelineLoader = Callable[[str], Any]

_POSTER_TYPES = {".jpg": ("JPEG", "image/jpeg"), ".jpeg": ("JPEG", "image/jpeg"), ".png": ("PNG", "image/png")}

# Each job encodes in a temporary folder named after the process (turbosite-job-<pid>-...), so a worker that
# starts can tell the folders a killed worker left from those of workers still running beside it.
TEMP_PREFIX = "turbosite-job-"

_pipelines: dict[str, Any] = {}
_pipelines_lock = threading.Lock()
_run_lock = threading.Lock()  # one generation at a time per process, whatever the thread count


def _load_inference_pipeline(model: str) -> Any:
    from inference.pipeline import I2VPipeline

    return I2VPipeline.load(
        model,
        settings.TURBO_MODEL_DIR or None,
        device=settings.TURBO_DEVICE or None,
        attention=settings.TURBO_ATTENTION,
        memory_policy=settings.TURBO_MEMORY_POLICY,
        linears=settings.TURBO_LINEARS,
        kernels=settings.TURBO_KERNELS,
        precompile=True,  # Triton's compiles beside the (disk-bound) load, not after it
    )


_loader: PipelineLoader = _load_inference_pipeline


def set_pipeline_loader(loader: PipelineLoader | None) -> None:
    """Replace how pipelines are built (tests inject a small fake); None restores the real one. Clears the cache."""
    global _loader
    _loader = loader or _load_inference_pipeline
    clear_pipelines()


def clear_pipelines() -> None:
    with _pipelines_lock:
        _pipelines.clear()
    _free_gpu_cache()


def get_pipeline(model: str) -> tuple[Any, float | None]:
    """The loaded pipeline for `model` and the seconds spent loading it now (None when it was already loaded)."""
    with _pipelines_lock:
        if model in _pipelines:
            return _pipelines[model], None
        if _pipelines:
            # One GPU holds one model: let the previous one go before loading the next.
            log.info("unloading %s to load %s", ", ".join(_pipelines), model)
            _pipelines.clear()
            _free_gpu_cache()
        start = time.perf_counter()
        pipeline = _loader(model)
        _pipelines[model] = pipeline
        return pipeline, time.perf_counter() - start


def warm_up_on_boot(pipeline: Any) -> broker.OnWorkerThreadBoot | None:
    """The pipeline's warm-up (Triton compiles, cuDNN tuning of the VAE's convolutions), to run in the Dramatiq
    thread that will run the jobs as it boots: PyTorch keeps cuDNN's tuned plans per thread. None on the CPU path,
    which has nothing to compile or tune."""
    device = getattr(pipeline, "device", None)
    if getattr(device, "type", None) != "cuda" or not hasattr(pipeline, "warm_up"):
        return None
    return broker.OnWorkerThreadBoot(pipeline.warm_up)


def warmed_up_line(seconds: dict[str, float]) -> str:
    return "warmed up: " + ", ".join(f"{res} {secs:.1f} s" for res, secs in seconds.items())


def loaded_models() -> list[str]:
    return list(_pipelines)


def worker_name() -> str:
    name = f"{socket.gethostname()}:{os.getpid()}"
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        name += f":gpu{gpus}"
    return name[:128]


def weights_report() -> dict[str, dict[str, object]]:
    """Which models this host can run: for each, whether its weight files are under TURBO_MODEL_DIR and which are
    missing. The web side reads it from this worker's registry row (generation.models_catalog)."""
    folder = Path(settings.TURBO_MODEL_DIR) if settings.TURBO_MODEL_DIR else None
    report: dict[str, dict[str, object]] = {}
    for name, config in MODELS.items():
        status = weights_status(config, folder)
        report[name] = {"installed": bool(status["installed"]), "missing": [str(m) for m in status["missing"]]}
    # The LoRA manifests under TURBO_MODEL_DIR/loras, so the web lists them without seeing the files.
    report[loras_catalog.REPORT_KEY] = loras_catalog.read_folder(folder / "loras" if folder else None)  # type: ignore[assignment]
    return report


class Presence(threading.Thread):
    """Keeps this worker's registry row (generation.models.Worker) fresh: written when the worker starts, then
    every TURBO_HEARTBEAT_INTERVAL_S with a new weights report (weights installed while it runs show up) and a
    reading of its GPUs (memory, utilisation: generation/gpu_readings.py), and removed when it stops."""

    def __init__(self, name: str | None = None, interval_s: float | None = None,
                 read_gpus: gpu_readings.GpuReader | None = None) -> None:
        super().__init__(name="worker-presence", daemon=True)
        self.worker = name or worker_name()
        self.interval_s = settings.TURBO_HEARTBEAT_INTERVAL_S if interval_s is None else interval_s
        self.read_gpus = read_gpus or gpu_readings.read_gpus
        self.stopped = threading.Event()

    def _gpus(self) -> list[dict[str, Any]]:
        try:
            return self.read_gpus()
        except Exception:  # a reading is a nicety: the beat that says "alive" must go out without it
            log.warning("worker %s: could not read its GPUs", self.worker, exc_info=True)
            return []

    def start(self) -> None:
        # Before the first job is taken.
        Worker.report(self.worker, weights_report(), gpus=self._gpus(), starting=True)
        super().start()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval_s):
                try:
                    Worker.report(self.worker, weights_report(), gpus=self._gpus())
                except Exception:
                    # A database restart must not end the beats; the next one reconnects.
                    log.exception("worker %s: presence beat failed; retrying", self.worker)
                    connection.close()
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        try:
            Worker.retire(self.worker)
        except Exception:
            log.warning("worker %s: could not remove its registry row (it goes stale by itself)", self.worker)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temp_folders(folder: str | None = None) -> list[str]:
    """Delete the job folders (partial mp4s) that killed worker processes of this host left in the temp folder:
    those whose process is gone. Folders of live workers are left alone. Returns the paths removed."""
    import shutil

    root = Path(folder or tempfile.gettempdir())
    removed: list[str] = []
    for path in root.glob(f"{TEMP_PREFIX}*"):
        owner = path.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not path.is_dir() or path.is_symlink() or not owner.isdigit():
            continue
        pid = int(owner)
        if pid == os.getpid() or _process_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(str(path))
    if removed:
        log.info("removed %d job folders left by stopped workers: %s", len(removed), ", ".join(removed[:5]))
    return removed


def _free_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class _Stop(Exception):
    """Raised by the runner's own checks between its steps (the pipeline raises GenerationCanceled instead)."""


class StorageFailed(Exception):
    """Reading the input or writing an output failed after the storage layer's retries."""


class ExplainedFailure(Exception):
    """A failure whose raiser knows what happened in the owner's words: `reason` completes "The video could not be
    made: ..."; the exception's own text stays for the log and the admin."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class _Ownership:
    """Why a running job must stop; set by the cancel check, the heartbeat thread or the deadline."""

    canceled: bool = False
    lost: bool = False
    timed_out: bool = False

    @property
    def stop(self) -> bool:
        return self.canceled or self.lost or self.timed_out

    def update(self, standing: Standing, *, beat_failed: bool = False) -> None:
        """Take in the row's standing; after a failed heartbeat the job cannot be ours any more."""
        if standing is Standing.CANCELED:
            self.canceled = True
        elif standing is Standing.LOST or beat_failed:
            self.lost = True


class _Heartbeat(threading.Thread):
    """Touches the row every TURBO_HEARTBEAT_INTERVAL_S while the job runs, so long steps still beat."""

    def __init__(self, job: Job, attempt: int, ownership: _Ownership) -> None:
        super().__init__(name=f"heartbeat-{job.id}", daemon=True)
        self.job = job
        self.attempt = attempt
        self.ownership = ownership
        self.stopped = threading.Event()
        self.beats = 0

    def run(self) -> None:
        try:
            while not self.stopped.wait(settings.TURBO_HEARTBEAT_INTERVAL_S):
                try:
                    if not self.beat():
                        return
                except Exception:
                    # One failed write (a database restart, a lock) must not end the heartbeats of a healthy job,
                    # or the reaper would take it back; reconnect on the next beat.
                    log.exception("heartbeat for job %s failed; retrying", self.job.id)
                    connection.close()
        finally:
            connection.close()

    def beat(self) -> bool:
        """Touch the row; False once the job is no longer this attempt's (canceled, reaped or deleted)."""
        self.beats += 1
        if self.job.beat(self.attempt):
            return True
        self.ownership.update(self.job.standing(self.attempt), beat_failed=True)
        return False

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


@dataclass
class _Run:
    """One attempt at one job, as seen by this worker."""

    job: Job
    attempt: int
    deadline: float
    ownership: _Ownership = field(default_factory=_Ownership)
    stage: Stage = Stage.STARTING
    stage_started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)
    last_write: float = 0.0

    # -- progress and cancellation ------------------------------------------------------------------------
    # The row's stage always names the stage running now (written the moment it starts), and its progress is
    # the stage's start plus the part of its share already done (generation.stages), never lower than before.

    def set_stage(self, stage: Stage) -> None:
        self.write_progress(stage, stage.progress(0.0))
        self.check()

    def write_progress(self, stage: Stage, progress: float) -> None:
        now = time.monotonic()
        changed = stage != self.stage
        if changed:
            self._stage_finished(self.stage)
        if not (changed or now - self.last_write >= settings.TURBO_PROGRESS_WRITE_INTERVAL_MS / 1000):
            return
        self.stage = stage
        self.last_write = now
        if not self.job.report_progress(progress=max(progress, self.job.progress), stage=stage,
                                        timings=dict(self.timings), attempt=self.attempt):
            self.refresh_ownership()

    def _stage_finished(self, stage: Stage) -> None:
        """Record how long a pipeline stage took as it ends, so the row shows the run so far (the ETA counts on
        it); the pipeline's own, exact timings replace these when generate returns."""
        now = time.perf_counter()
        if stage in PIPELINE_STAGES:
            self.timings.setdefault(TIMING_KEYS[stage], round(now - self.stage_started, 4))
        self.stage_started = now

    def on_progress(self, event: ProgressEvent) -> None:
        stage = Stage.parse(event.stage)
        if stage is None or stage not in PIPELINE_STAGES:
            return  # "done": the worker's own stages follow
        self.write_progress(stage, stage.progress(event.stage_fraction()))

    def should_cancel(self) -> bool:
        if not self.ownership.stop:
            self.refresh_ownership()
        if time.monotonic() > self.deadline:
            self.ownership.timed_out = True
        return self.ownership.stop

    def refresh_ownership(self) -> None:
        self.ownership.update(self.job.standing(self.attempt))

    def check(self) -> None:
        if self.should_cancel():
            raise _Stop(self.stage)

    # -- storage ----------------------------------------------------------------------------------------------

    def upload(self, name: str, data: bytes, content_type: str) -> str:
        self.uploaded.append(name)  # before the call: a write that failed half-way is cleaned up as well
        try:
            # Bounded like every storage call: a storage that hangs fails the job after this long, not hours later.
            return storage.save_bytes(name, data, content_type, deadline_s=settings.TURBO_WORKER_STORAGE_DEADLINE_S)
        except Exception as exc:
            raise StorageFailed(f"saving {name} failed ({type(exc).__name__}: {exc})") from exc

    def delete_outputs(self) -> None:
        if self.job.claimed_again(self.attempt):
            # The reaper gave the job to another attempt, which writes the same names: those files are its own.
            self.uploaded.clear()
            return
        for name in dict.fromkeys(self.uploaded):
            storage.delete_quietly(name)
        self.uploaded.clear()


def execute_job(job_id: str) -> str | None:
    """Run job `job_id` to an end state. Returns that state, or None when this delivery had nothing to do
    (unknown id, already claimed, canceled before it started, or taken back by the reaper mid-run)."""
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        log.warning("job %s does not exist (deleted before it ran?); message dropped", job_id)
        return None
    if not job.claim(worker=worker_name()):
        log.info("job %s is %s, not QUEUED: duplicate or stale delivery skipped", job_id, job.status)
        return None
    run = _Run(job=job, attempt=job.attempts, deadline=time.monotonic() + settings.TURBO_JOB_TIME_LIMIT_S)
    heartbeat = _Heartbeat(job, run.attempt, run.ownership)
    heartbeat.start()
    started = time.perf_counter()
    log.info("job %s claimed by %s (attempt %d)", job.id, job.worker, run.attempt)
    try:
        with _run_lock:
            return _run_to_end(run, started)
    finally:
        heartbeat.stop()


def _run_to_end(run: _Run, started: float) -> str | None:
    job = run.job
    try:
        result, names = _generate_and_store(run)
    except (_Stop, GenerationCanceled):
        return _stopped(run)
    except Shutdown:
        # The worker is stopping (deploy, SIGTERM): give the job back to the queue for another worker.
        run.delete_outputs()
        if job.requeue("The worker running this job shut down; the job was queued again and starts over on "
                       "another worker.", detail=f"worker {job.worker} shut down during {run.stage}",
                       attempt=run.attempt):
            queue.enqueue_job(job.id)
        return Job.Status.QUEUED
    except TimeLimitExceeded:
        return _failed(run, _time_limit_message(run), f"dramatiq time limit during {run.stage}")
    except BaseException as exc:  # every failure must end the job, whatever raised it
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            _failed(run, f"The video could not be made: the worker was stopped while {run.stage.label.lower()}. "
                         "Run it again.", failure_detail(exc, run))
            raise
        log.exception("job %s failed during %s", job.id, run.stage)
        return _failed(run, failure_message(exc, run), failure_detail(exc, run))

    run.timings["total"] = round(time.perf_counter() - started, 4)
    if job.created_at and job.started_at:
        run.timings["queue_wait"] = round((job.started_at - job.created_at).total_seconds(), 4)
    mp4_name, poster_name, video_bytes = names
    succeeded = job.succeed(
        attempt=run.attempt,
        output_video=mp4_name,
        poster=poster_name,
        width=result.width,
        height=result.height,
        frames=result.num_frames,
        fps=result.fps,
        bytes=video_bytes,
        timings=run.timings,
        gpu_name=(result.device_name or "")[:128],
        peak_memory_bytes=result.peak_memory_bytes,
    )
    if not succeeded:
        # Canceled (or taken back) in the instant between the last check and here: keep nothing.
        run.refresh_ownership()
        return _stopped(run)
    log.info("job %s succeeded in %.2f s", job.id, run.timings["total"])
    return Job.Status.SUCCEEDED


def _generate_and_store(run: _Run) -> tuple[Any, tuple[str, str, int]]:
    job = run.job
    run.set_stage(Stage.LOADING_MODEL)
    pipeline, load_seconds = get_pipeline(job.model)
    if load_seconds is not None:
        run.timings["load_model"] = round(load_seconds, 4)
    device_name = str(getattr(pipeline, "device_name", "") or "")
    if device_name:
        job.record_gpu(device_name)

    run.set_stage(Stage.READING_INPUT)
    t0 = time.perf_counter()
    image = _read_input(job)
    run.timings["read_input"] = round(time.perf_counter() - t0, 4)
    run.check()

    request = GenerationRequest(
        image=image,
        prompt=job.prompt,
        seed=int(job.seed),
        num_steps=int(job.num_steps),
        resolution=job.resolution or None,
        num_frames=job.num_frames or None,
        adaptive_resolution=bool(job.adaptive_resolution),
        ode=bool(job.ode),
        resize_mode=job.resize_mode or "stretch",
        loras=tuple((str(item["name"]), float(item["strength"])) for item in job.loras or []),
    )
    mp4_name = storage.output_name(job)
    poster_name = storage.poster_name(job)
    poster_format, poster_type = _POSTER_TYPES.get(Path(poster_name).suffix.lower(), ("JPEG", "image/jpeg"))
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as folder:
        video_path = Path(folder) / "video.mp4"
        stream = _open_stream(pipeline, video_path)
        # Leaving this block by any exception (cancel, failure, shutdown) kills ffmpeg and deletes its partial file.
        with stream if stream is not None else contextlib.nullcontext():
            sink = {"frame_sink": stream.write} if stream is not None else {}
            result = pipeline.generate(request, progress=run.on_progress, should_cancel=run.should_cancel, **sink)
            run.timings.update({name: round(float(value), 4) for name, value in result.timings.items()})

            # Streaming, most of the mp4 was encoded during the decode: this stage only waits for the tail, and
            # "encode" is its own time, so the stages still add up to the job's total.
            run.set_stage(Stage.ENCODING)
            t0 = time.perf_counter()
            video_data, poster_data = _encode(result, video_path, poster_format, stream)
            run.timings["encode"] = round(time.perf_counter() - t0, 4)

    run.set_stage(Stage.UPLOADING)
    t0 = time.perf_counter()
    mp4_name = run.upload(mp4_name, video_data, "video/mp4")
    poster_name = run.upload(poster_name, poster_data, poster_type)
    run.timings["upload"] = round(time.perf_counter() - t0, 4)
    run.check()
    return result, (mp4_name, poster_name, len(video_data))


def _read_input(job: Job) -> Image.Image:
    name = job.input_image.name if job.input_image else ""
    if not name:
        raise InferenceInputError(f"job {job.id} has no input image")
    try:
        # Retries transient errors itself, within the worker's deadline.
        data = storage.read_bytes(name, deadline_s=settings.TURBO_WORKER_STORAGE_DEADLINE_S)
    except Exception as exc:
        raise StorageFailed(f"reading the input image {name} failed ({type(exc).__name__}: {exc})") from exc
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise InferenceInputError(f"the stored input image {name} cannot be decoded ({exc})") from exc
    return image.convert("RGB")


def _accepts_frame_sink(pipeline: Any) -> bool:
    """Whether pipeline.generate takes frame_sink (the real pipeline does; older or fake ones may not)."""
    try:
        parameters = inspect.signature(pipeline.generate).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return "frame_sink" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _open_stream(pipeline: Any, video_path: Path) -> Mp4Stream | None:
    """An Mp4Stream at `video_path` for a pipeline that can feed one while it decodes, else None (the mp4 is
    then written after generate). The stream needs the frame rate up front: a pipeline must say it (config.fps)."""
    fps = getattr(getattr(pipeline, "config", None), "fps", None)
    if not isinstance(fps, int) or fps <= 0 or not _accepts_frame_sink(pipeline):
        return None
    from inference.video import Mp4Stream

    return Mp4Stream(video_path, fps)


def _encode(result: Any, video_path: Path, poster_format: str, stream: Mp4Stream | None) -> tuple[bytes, bytes]:
    """The mp4 and poster bytes: finishes `stream` (fed during generate) or, without one, encodes result.frames."""
    from inference.video import write_mp4, write_poster

    num_frames = len(result.frames)
    if stream is not None and stream.frames_written == num_frames and stream.fps == result.fps:
        stream.finish()
    else:
        if stream is not None:
            # A pipeline that streamed a different video than it returned (or none): the result is the truth.
            log.warning("streamed %d frames at %s fps but the result has %d at %s fps; encoding the result again",
                        stream.frames_written, stream.fps, num_frames, result.fps)
            stream.abort()
        write_mp4(result.frames, video_path, result.fps)
    poster_path = video_path.with_name(f"poster.{poster_format.lower()}")
    write_poster(result.frames[0], poster_path, poster_format)
    return video_path.read_bytes(), poster_path.read_bytes()


def _stopped(run: _Run) -> str | None:
    """The job stopped between steps: canceled by its owner, out of time, or no longer ours."""
    run.delete_outputs()
    job = run.job
    if run.ownership.canceled:
        job.cancel()  # usually already CANCELED by the user; this covers a cancel that raced the claim
        log.info("job %s canceled during %s", job.id, run.stage)
        return Job.Status.CANCELED
    if run.ownership.timed_out and not run.ownership.lost:
        return _failed(run, _time_limit_message(run), f"time limit reached during {run.stage}")
    log.warning("job %s was taken from this worker during %s (reaped or deleted); letting it go", job.id, run.stage)
    return None


def _failed(run: _Run, message: str, detail: str) -> str | None:
    run.delete_outputs()
    _free_gpu_cache()
    if run.job.fail(message, detail=detail, attempt=run.attempt, timings=run.timings):
        return Job.Status.FAILED
    run.refresh_ownership()
    return Job.Status.CANCELED if run.ownership.canceled else None


def _time_limit_message(run: _Run) -> str:
    return (f"The video could not be made: it took longer than the time limit of {settings.TURBO_JOB_TIME_LIMIT_S} s "
            f"(it was {run.stage.label.lower()}). Try fewer frames, fewer steps or a lower resolution.")


def failure_message(exc: BaseException, run: _Run) -> str:
    """What the job's owner reads: a short reason and what to try. No exception text, file names or server
    names (those go to failure_detail, the log and the admin)."""
    job = run.job
    if isinstance(exc, WeightsError):
        return (f"The video could not be made: the model {job.model} is not installed on this server. Choose "
                "another model, or ask the operator to install its weights.")
    if _is_out_of_memory(exc):
        return (f"The video could not be made: the GPU ran out of memory for {job.num_frames} frames at "
                f"{job.resolution}. Try a lower resolution or fewer frames.")
    if isinstance(exc, StorageFailed):
        return ("The video could not be made: file storage was unavailable, so nothing was kept. Run it again in a "
                "few minutes.")
    if isinstance(exc, InferenceInputError):
        return ("The video could not be made: the model cannot use this image with these settings. Try another "
                "image or the default settings.")
    if isinstance(exc, ExplainedFailure):
        return f"The video could not be made: {exc.reason}"
    return (f"The video could not be made: something went wrong on the server while {run.stage.label.lower()}. "
            f"Run it again; if it fails again, give the operator the job id {job.id}.")


def failure_detail(exc: BaseException, run: _Run) -> str:
    """For operators: the stage, the exception and its traceback (the admin shows it; the owner never sees it)."""
    trace = "".join(traceback.format_exception(exc))
    return f"{type(exc).__name__} during {run.stage}: {exc}\n\n{trace}"
