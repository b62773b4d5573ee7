"""What the API, the compatibility routes, the pages and the admin do to jobs: create, cancel, retry, delete, and
estimate where a job stands.

Every refusal is a JobRejected with a message for a person and the HTTP status that fits it, so each front end
only translates. The parameter rules are the `check_*` functions below, with the limits of generation.limits and the
model's own facts (generation.models_catalog); `validate_parameters` runs them all, and the API serializers and the
pages' form only parse types before handing over. The queue message is sent after the creating transaction commits (a worker never receives the
id of a row it cannot read yet).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Count, DurationField, ExpressionWrapper, F, OuterRef, Subquery
from django.db.models.functions import Coalesce
from PIL import Image

from generation import loras_catalog, models_catalog, storage
from generation.image_input import DecoderBusy, ImageRejected, normalise_upload
from generation.limits import Limit, limit
from generation.models import Job
from generation.prompt_rules import PromptRejected, clean_prompt_or_reject

log = logging.getLogger(__name__)

ETA_SAMPLE = 20  # recent successful runs averaged for the ETA


class JobRejected(Exception):
    """A request the service refuses. `status_code` is the HTTP answer; `field` names the parameter at fault."""

    def __init__(self, message: str, status_code: int = 400, *, field: str | None = None,
                 code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.field = field
        self.code = code


@dataclass(frozen=True)
class JobParameters:
    """The validated, normalised parameters of one job. `seed` is None when the caller asked for a random one."""

    prompt: str
    seed: int | None
    num_steps: int
    resolution: str
    num_frames: int
    adaptive_resolution: bool
    ode: bool
    model: str
    resize_mode: str = "stretch"
    loras: tuple[tuple[str, float], ...] = ()  # (installed LoRA name, strength)

    def fingerprint(self, image_digest: str) -> str:
        body = json.dumps({**asdict(self), "image_sha256": image_digest}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False: an earlier request with the same Idempotency-Key and body made this job


# -- parameters -----------------------------------------------------------------------------------------------

def _int(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise JobRejected(f"{field} must be an integer, got a boolean", field=field)
    try:
        return int(str(value).strip())
    except ValueError:
        raise JobRejected(f"{field} must be an integer, got {str(value)[:40]!r}", field=field) from None


def check_prompt(value: Any) -> str:
    try:
        return clean_prompt_or_reject(value)
    except PromptRejected as exc:
        raise JobRejected(exc.message, field="prompt", code=exc.code) from None


def check_model(name: Any) -> models_catalog.ModelFacts:
    """The named model's facts, or the deployment's default model's when none is named."""
    try:
        return models_catalog.get_model(name or None)
    except models_catalog.UnknownModel as exc:
        raise JobRejected(str(exc), field="model", code="unknown_model") from None


def check_seed(value: Any) -> int | None:
    """The seed, or None for a random one (random_seed)."""
    seed = _int(value, "seed")
    allowed = limit("seed")
    if seed is not None and not allowed.allows(seed):
        raise JobRejected(f"seed must be between {allowed.minimum:g} and {allowed.maximum}, got {seed}", field="seed")
    return seed


def random_seed() -> int:
    allowed = limit("seed")
    return int(allowed.minimum) + secrets.randbelow(int(allowed.maximum - allowed.minimum) + 1)


def check_num_steps(value: Any) -> int:
    allowed = limit("num_steps")
    steps = _int(value, "num_steps")
    steps = allowed.default if steps is None else steps
    if not allowed.allows(steps):
        *first, last = range(int(allowed.minimum), int(allowed.maximum) + 1)
        words = f"{', '.join(map(str, first))} or {last}" if first else str(last)
        raise JobRejected(f"num_steps must be {words}, got {steps}", field="num_steps")
    return steps


def check_resolution(value: Any, facts: models_catalog.ModelFacts) -> str:
    """A resolution the table allows and the model offers; the model's default when none is named."""
    chosen = str(value).strip() if value not in (None, "") else facts.default_resolution
    offered = [name for name in facts.resolutions if limit("resolution").allows(name)]
    if chosen not in offered:
        raise JobRejected(f"resolution must be one of {', '.join(offered)}, got {chosen!r}", field="resolution")
    return chosen


def frame_limit(facts: models_catalog.ModelFacts) -> Limit:
    """The table's frame rule (4k+1 from the minimum) up to the model's own maximum."""
    return replace(limit("num_frames"), maximum=facts.max_frames)


def check_num_frames(value: Any, facts: models_catalog.ModelFacts) -> int:
    """A frame count the model can make; the model's default when none is named."""
    frames = _int(value, "num_frames")
    frames = facts.default_frames if frames is None else frames
    allowed = frame_limit(facts)
    if not allowed.allows(frames):
        raise JobRejected(
            f"num_frames must be {allowed.step}k+1 between {allowed.minimum:g} and {allowed.maximum:g} for model "
            f"{facts.name} (e.g. 17, 33, 81), got {frames}", field="num_frames")
    return frames


def check_resize_mode(value: Any) -> str:
    allowed = limit("resize_mode")
    mode = str(value).strip() if value not in (None, "") else allowed.default
    if not allowed.allows(mode):
        raise JobRejected(f"resize_mode must be one of {', '.join(allowed.choices)}, got {mode[:40]!r}",
                          field="resize_mode")
    return mode


def validate_parameters(*, prompt: Any, seed: Any = None, num_steps: Any = None, resolution: Any = None,
                        num_frames: Any = None, adaptive_resolution: bool = True, ode: bool = False,
                        model: str | None = None, resize_mode: Any = None, loras: Any = None) -> JobParameters:
    """Check every parameter and fill defaults from the table and the model's config. Raises JobRejected (400, or
    409 when the model's weights are not installed) naming the parameter and the allowed values."""
    clean_prompt = check_prompt(prompt)
    facts = check_model(model)
    return JobParameters(prompt=clean_prompt, seed=check_seed(seed), num_steps=check_num_steps(num_steps),
                         resolution=check_resolution(resolution, facts),
                         num_frames=check_num_frames(num_frames, facts),
                         adaptive_resolution=bool(adaptive_resolution), ode=bool(ode), model=facts.name,
                         resize_mode=check_resize_mode(resize_mode), loras=check_loras(loras, facts.name))


def _lora_item(item: Any) -> tuple[str, Any]:
    """("name", strength or None) from "name", "name:strength", {"name", "strength"} or a (name, strength) pair."""
    if isinstance(item, dict):
        return str(item.get("name", "")).strip(), item.get("strength")
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return str(item[0]).strip(), item[1]
    name, _, strength = str(item).partition(":")
    return name.strip(), strength.strip() or None


def check_loras(loras: Any, model: str) -> tuple[tuple[str, float], ...]:
    """Installed LoRAs for `model`, each once, at most the table's count, strengths within its limit (default: the
    manifest's). Raises JobRejected naming the LoRA at fault."""
    if loras in (None, "", [], ()):
        return ()
    items = [loras] if isinstance(loras, (str, dict)) else list(loras)
    most = int(limit("loras").maximum)
    if len(items) > most:
        raise JobRejected(f"at most {most} LoRAs per job, got {len(items)}", field="loras")
    strengths = limit("lora_strength")
    installed = {str(entry["name"]): entry for entry in loras_catalog.list_loras()}
    chosen: list[tuple[str, float]] = []
    for item in items:
        name, strength = _lora_item(item)
        entry = installed.get(name)
        if entry is None:
            known = ", ".join(sorted(n for n, e in installed.items() if e["model"] == model)) or "none"
            raise JobRejected(f"LoRA {name[:70]!r} is not installed; installed for {model}: {known}", field="loras",
                              code="unknown_lora")
        if entry["model"] != model:
            raise JobRejected(f"LoRA {name!r} is for model {entry['model']}, not {model}", field="loras")
        if any(name == other for other, _ in chosen):
            raise JobRejected(f"LoRA {name!r} is named twice", field="loras")
        try:
            value = float(entry["default_strength"] if strength in (None, "") else strength)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise JobRejected(f"LoRA strength must be a number, got {str(strength)[:40]!r} for {name!r}",
                              field="loras") from None
        if not strengths.allows(value):  # also refuses NaN
            raise JobRejected(f"LoRA strength must be between {strengths.minimum:g} and "
                              f"{strengths.maximum:g}, got {value} for {name!r}", field="loras")
        chosen.append((name, value))
    return tuple(chosen)


def frames_for_duration(seconds: float, model: str | None = None) -> int:
    """The valid frame count (the table's 4k+1 rule) nearest to `seconds` of video at the model's fps (plus the first
    frame), at least the table's minimum. Used by the compatibility route's duration_seconds. A duration the model
    cannot make at its default resolution is refused naming the limit, never silently shortened."""
    facts = check_model(model)
    if not seconds > 0:
        raise JobRejected(f"duration_seconds must be positive, got {seconds}", field="duration_seconds")
    allowed = frame_limit(facts)
    frames = max(int(allowed.minimum), allowed.step * round(seconds * facts.fps / allowed.step) + 1)
    if frames > facts.max_frames:
        longest = (facts.max_frames - 1) / facts.fps
        raise JobRejected(
            f"duration_seconds must be at most {longest:g} s for model {facts.name} at {facts.default_resolution} "
            f"({facts.max_frames} frames at {facts.fps} fps), got {seconds:g}", field="duration_seconds",
            code="duration_too_long")
    return frames


def _check_model_installed(name: str) -> None:
    facts = models_catalog.get_model(name)
    if not facts.installed:
        raise JobRejected(
            f"model {name} cannot run here: its weights are not installed (missing: {', '.join(facts.missing)}). "
            "An operator must put them in TURBO_MODEL_DIR on a GPU worker.", 409, field="model", code="model_not_installed")


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    key = key.strip()
    if not key:
        return None
    most = int(limit("idempotency_key").maximum)
    if len(key) > most or not key.isprintable():
        raise JobRejected(f"Idempotency-Key must be at most {most} printable characters",
                          field="Idempotency-Key", code="bad_idempotency_key")
    return key


def _upload_digest(upload: UploadedFile) -> str:
    digest = hashlib.sha256()
    upload.seek(0)
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


# -- creating -------------------------------------------------------------------------------------------------

def active_job_count(owner) -> int:
    return Job.objects.filter(owner=owner, status__in=Job.ACTIVE).count()


def _check_active_limit(owner) -> None:
    limit = settings.TURBO_MAX_ACTIVE_JOBS
    if limit and active_job_count(owner) >= limit:
        raise JobRejected(
            f"You already have {limit} jobs queued or running (the limit is {limit}). Wait for one to finish or "
            "cancel one, then submit again.", 429, code="too_many_active_jobs")


def _replay(owner, key: str, fingerprint: str) -> Submission | None:
    earlier = Job.objects.filter(owner=owner, idempotency_key=key).first()
    if earlier is None:
        return None
    if earlier.request_fingerprint != fingerprint:
        raise JobRejected(
            "This Idempotency-Key was already used with different parameters or a different image. "
            "Use a new key for a new job.", 422, field="Idempotency-Key", code="idempotency_key_reused")
    return Submission(job=earlier, created=False)


def enqueue_job(job_id: uuid.UUID) -> None:
    """Send the job to the GPU queue (generation.queue, looked up at call time so tests can patch either name)."""
    from generation import queue

    queue.enqueue_job(job_id)


def broker_available() -> bool:
    """Whether the queue's broker answers (always true for the in-process broker)."""
    from generation import queue

    return queue.broker_ok()


def _check_broker() -> None:
    if not broker_available():
        raise JobRejected("The job queue is unavailable right now, so nothing was created. Try again in a moment.",
                          503, code="queue_unavailable")


def _enqueue_after_commit(job: Job, failures: list[BaseException]) -> None:
    def send() -> None:
        try:
            enqueue_job(job.id)
        except Exception as exc:
            log.exception("job %s: could not send it to the queue", job.id)
            failures.append(exc)
            # Whoever committed may not be waiting for the answer (an outer transaction): never leave it QUEUED
            # without a message.
            job.fail("The video could not be made: the job could not be handed to the queue. Submit it again.",
                     detail=f"enqueue failed: {type(exc).__name__}: {exc}")

    transaction.on_commit(send)


class _AlreadySubmitted(Exception):
    """A request with the same Idempotency-Key committed while this one waited for the per-user lock."""

    def __init__(self, submission: Submission) -> None:
        super().__init__(str(submission.job.id))
        self.submission = submission


def _insert(owner, params: JobParameters, png: bytes, *, key: str | None, fingerprint: str,
            retry_of: Job | None = None, attach: Callable[[Job], None] | None = None) -> Job:
    """Store the input, then insert the QUEUED row under a per-user lock (so the active-job limit holds under
    concurrent requests) and send it after commit. Removes the stored input if the row is not created.
    `attach(job)` runs inside the creating transaction, so what it saves (a webhook subscription, a deadline)
    commits with the row, before any worker can see the job."""
    job = Job(id=uuid.uuid4(), owner=owner, prompt=params.prompt,
              seed=params.seed if params.seed is not None else random_seed(),
              num_steps=params.num_steps, resolution=params.resolution, num_frames=params.num_frames,
              adaptive_resolution=params.adaptive_resolution, ode=params.ode, model=params.model,
              resize_mode=params.resize_mode, loras=[{"name": n, "strength": s} for n, s in params.loras],
              idempotency_key=key, request_fingerprint=fingerprint,
              retry_of=retry_of, stage="queued")
    name = storage.input_name(job)
    try:
        storage.save_bytes(name, png, "image/png")
    except Exception as exc:
        log.exception("job %s: storing the input image failed", job.id)
        raise JobRejected("The image could not be stored (storage unavailable). Try again in a moment.", 503,
                          code="storage_unavailable") from exc
    job.input_image.name = name
    send_failures: list[BaseException] = []
    try:
        with transaction.atomic():
            get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
            # A retried request whose twin won the lock gets that job, not a 429 for the twin's slot.
            if key and (earlier := _replay(owner, key, fingerprint)):
                raise _AlreadySubmitted(earlier)
            _check_active_limit(owner)
            job.save(force_insert=True)
            if attach is not None:
                attach(job)
            _enqueue_after_commit(job, send_failures)
    except BaseException:
        storage.delete_quietly(name)
        raise
    if send_failures:
        # Committed, but its message never left: the request fails as a whole and leaves nothing behind.
        Job.objects.filter(id=job.id).delete()
        storage.delete_quietly(name)
        raise JobRejected("The job queue is unavailable right now, so the job was not created. Try again in a "
                          "moment.", 503, code="queue_unavailable") from send_failures[0]
    job.refresh_from_db()
    return job


def submit_job(owner, *, image: UploadedFile, prompt: Any, seed: Any = None, num_steps: Any = None,
               resolution: Any = None, num_frames: Any = None, adaptive_resolution: bool = True, ode: bool = False,
               model: str | None = None, idempotency_key: str | None = None,
               attach: Callable[[Job], None] | None = None, resize_mode: Any = None,
               loras: Any = None) -> Submission:
    """create_job, also saying whether the job is new or an idempotent replay of an earlier request.
    `attach(job)` runs in the creating transaction of a new job (see _insert); a replay does not run it."""
    if image is None:
        raise JobRejected("An image is required (multipart field 'image').", field="image", code="image_missing")
    params = validate_parameters(prompt=prompt, seed=seed, num_steps=num_steps, resolution=resolution,
                                 num_frames=num_frames, adaptive_resolution=adaptive_resolution, ode=ode, model=model,
                                 resize_mode=resize_mode, loras=loras)
    key = check_idempotency_key(idempotency_key)
    fingerprint = params.fingerprint(_upload_digest(image))
    if key and (earlier := _replay(owner, key, fingerprint)):
        return earlier
    _check_model_installed(params.model)
    _check_active_limit(owner)  # cheap early answer; checked again under the lock
    _check_broker()
    try:
        png = _png_bytes(normalise_upload(image, max_short_side=models_catalog.largest_output_side()))
    except ImageRejected as exc:
        status = 413 if exc.code == "too_large" else 400
        raise JobRejected(exc.message, status, field="image", code=exc.code) from None
    except DecoderBusy:
        raise JobRejected("The server is busy decoding other images. Try again in a moment.", 503,
                          code="busy") from None
    try:
        job = _insert(owner, params, png, key=key, fingerprint=fingerprint, attach=attach)
    except _AlreadySubmitted as replay:
        return replay.submission
    except IntegrityError:
        # Two requests with one Idempotency-Key raced; the other one inserted first.
        if key and (earlier := _replay(owner, key, fingerprint)):
            return earlier
        raise
    return Submission(job=job, created=True)


def create_job(owner, *, image: UploadedFile, prompt: Any, seed: Any = None, num_steps: Any = None,
               resolution: Any = None, num_frames: Any = None, adaptive_resolution: bool = True, ode: bool = False,
               model: str | None = None, idempotency_key: str | None = None, resize_mode: Any = None,
               loras: Any = None, attach: Callable[[Job], None] | None = None) -> Job:
    """Validate, normalise and store the image, create the QUEUED job and enqueue it after commit.
    A repeated Idempotency-Key with the same body returns the first job; with another body, JobRejected 422.
    `attach(job)` saves what belongs with the new row in its transaction (a webhook subscription)."""
    return submit_job(owner, image=image, prompt=prompt, seed=seed, num_steps=num_steps, resolution=resolution,
                      num_frames=num_frames, adaptive_resolution=adaptive_resolution, ode=ode, model=model,
                      idempotency_key=idempotency_key, resize_mode=resize_mode, loras=loras, attach=attach).job


def retry_job(job: Job) -> Job:
    """A new job with the same image, parameters and seed (retry_of set). Counts against the active-job limit."""
    # Validated again: the model's limits (or the model itself) may have changed since the job was made.
    params = validate_parameters(prompt=job.prompt, seed=job.seed, num_steps=job.num_steps, resolution=job.resolution,
                                 num_frames=job.num_frames, adaptive_resolution=job.adaptive_resolution, ode=job.ode,
                                 model=job.model, resize_mode=job.resize_mode, loras=job.loras)
    _check_model_installed(params.model)
    _check_active_limit(job.owner)
    _check_broker()
    try:
        png = storage.read_bytes(job.input_image.name)
    except Exception as exc:
        if storage.is_transient(exc):
            raise JobRejected("The stored input image cannot be read right now (storage unavailable). Try again "
                              "in a moment.", 503, code="storage_unavailable") from exc
        raise JobRejected(f"The input image of job {job.id} is no longer stored, so it cannot be run again.", 409,
                          code="input_missing") from exc
    return _insert(job.owner, params, png, key=None,
                   fingerprint=params.fingerprint(hashlib.sha256(png).hexdigest()), retry_of=job)


# -- changing ------------------------------------------------------------------------------------------------

def cancel_job(job: Job) -> bool:
    """QUEUED/RUNNING -> CANCELED. A running worker sees it between steps and stops. False if already finished."""
    return job.cancel()


def delete_job(job: Job) -> None:
    """Cancel the job if it is still active, then delete its files and its row."""
    if job.status in Job.ACTIVE:
        job.cancel()
    names = {job.input_image.name, job.output_video.name, job.poster.name,
             storage.input_name(job), storage.output_name(job), storage.poster_name(job)}
    job.delete()
    for name in sorted(n for n in names if n):
        storage.delete_quietly(name)


def requeue_job(job: Job) -> bool:
    """Operator action: put a RUNNING job (worker lost) back in the queue, or send a QUEUED job's message again.
    A duplicate message is harmless because the worker's claim is conditional. False for finished jobs."""
    if job.status == Job.Status.RUNNING and not job.requeue("requeued by an operator"):
        return False
    if job.status != Job.Status.QUEUED:
        return False
    # Outside a transaction this sends at once, so a broker failure reaches the caller (the admin says so).
    transaction.on_commit(lambda: enqueue_job(job.id))
    return True


# -- where it stands -----------------------------------------------------------------------------------------

def queue_position(job: Job) -> int | None:
    """1 for the next job a free worker takes; None unless the job is QUEUED. One FIFO queue serves everyone."""
    if job.status != Job.Status.QUEUED:
        return None
    return Job.objects.filter(status=Job.Status.QUEUED, created_at__lt=job.created_at).count() + 1


def queue_positions(jobs: Iterable[Job]) -> dict[uuid.UUID, int]:
    """queue_position for every QUEUED job of `jobs` (a page of a list) in one query, whatever their number."""
    waiting = {job.id: job.created_at for job in jobs if job.status == Job.Status.QUEUED}
    if not waiting:
        return {}
    # One query: each page job counts the queued jobs ahead of it (an index range on status, created_at).
    ahead = (Job.objects.filter(status=Job.Status.QUEUED, created_at__lt=OuterRef("created_at")).order_by()
             .values("status").annotate(count=Count("id")).values("count"))
    ranked = (Job.objects.filter(id__in=list(waiting))
              .annotate(position=Coalesce(Subquery(ahead), 0) + 1).values_list("id", "position"))
    return dict(ranked)


ETA_CACHE_SECONDS = 30  # every status poll asks for this; it moves slowly


def typical_run_seconds(model: str) -> float | None:
    """Mean wall time of the model's recent successful runs, None before the first one (cached briefly)."""
    key = f"turbosite:typical-run:{model}"
    cached = cache.get(key)
    if cached is not None:
        return cached[0]
    value = _typical_run_seconds(model)
    cache.set(key, (value,), ETA_CACHE_SECONDS)
    return value


def _typical_run_seconds(model: str) -> float | None:
    recent = (Job.objects.filter(model=model, status=Job.Status.SUCCEEDED, started_at__isnull=False,
                                 finished_at__isnull=False)
              .order_by("-finished_at")[:ETA_SAMPLE]
              .annotate(run=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())))
    values = [row.run for row in recent]
    if not values:
        return None
    return sum(values, timedelta()).total_seconds() / len(values)


def eta_seconds(job: Job) -> float | None:
    """Seconds until the job should finish, from the measured stage costs (generation.eta); None when finished or
    when nothing has been measured yet."""
    from generation import eta

    return eta.eta_seconds(job)


__all__ = [
    "JobParameters", "JobRejected", "Submission", "active_job_count", "broker_available", "cancel_job",
    "check_idempotency_key", "check_loras", "check_model", "check_num_frames", "check_num_steps", "check_prompt",
    "check_resize_mode", "check_resolution", "check_seed", "create_job", "delete_job", "enqueue_job", "eta_seconds",
    "frame_limit", "frames_for_duration", "queue_position", "queue_positions", "random_seed", "requeue_job",
    "retry_job", "submit_job", "typical_run_seconds", "validate_parameters",
]
