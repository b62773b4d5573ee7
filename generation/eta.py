"""How long until a job is done, from what each stage measured on recent successful jobs of its model.

A stage's cost scales with its work: denoising with steps x latent frames, the VAE, encoding and upload with frames,
the rest is fixed. A running job's remaining time is what is left of its current stage plus the cost of the stages
after it. What is left of the current stage is the smaller of "its cost times the part not done" and "its cost
minus the time already spent in it" (the row's `timings` hold the stages already run): both only shrink while the
job runs, and when the next stage starts the estimate is at most what the last one said, so an ETA never counts up
(a stage running long leaves it at the cost of the stages still to come until that stage ends).

A queued job waits for the workers: each running job frees its worker after its remaining time, and the queued jobs
ahead of it (FIFO) take the first worker free, each for its own estimated cost, so a short job behind a long one
gets an ETA that includes the long one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.utils import timezone

from generation.models import Job
from generation.stages import RUN_ORDER, TIMING_KEYS, Stage

SAMPLE = 20  # recent successful jobs whose stage costs are averaged
CACHE_SECONDS = 30  # every status poll asks; costs move only when jobs finish
_VAE_STRIDE = 4  # frames per latent frame (Wan VAE)
_PER_FRAME = (Stage.IMAGE_ENCODE, Stage.DECODE, Stage.ENCODING, Stage.UPLOADING)
# Loading the model happens only when a worker has a different one loaded: counted for a job that is loading it.
_QUEUED_STAGES = tuple(stage for stage in RUN_ORDER if stage != Stage.LOADING_MODEL)


def work(stage: Stage, num_frames: int, num_steps: int) -> float:
    """Units of work of `stage` for a job of this size (what its measured cost is divided by)."""
    frames = max(1, int(num_frames or 1))
    if stage == Stage.DENOISE:
        return max(1, int(num_steps or 1)) * (1 + (frames - 1) // _VAE_STRIDE)
    if stage in _PER_FRAME:
        return float(frames)
    return 1.0


@dataclass(frozen=True)
class StageCosts:
    """Seconds per unit of work of each stage, measured on one model's recent jobs."""

    per_unit: dict[Stage, float]

    def seconds(self, stage: Stage, num_frames: int, num_steps: int) -> float:
        return self.per_unit.get(stage, 0.0) * work(stage, num_frames, num_steps)

    def total(self, num_frames: int, num_steps: int) -> float:
        return sum(self.seconds(stage, num_frames, num_steps) for stage in _QUEUED_STAGES)


def _sample_costs(row: dict[str, Any]) -> dict[Stage, float]:
    """Per-unit costs from one finished job. Stages its timings do not name (jobs from before per-stage timings)
    share the rest of its run time in proportion to their progress share."""
    timings = row["timings"] or {}
    seconds: dict[Stage, float] = {}
    for stage in RUN_ORDER:
        value = timings.get(TIMING_KEYS[stage])
        if isinstance(value, int | float) and value >= 0:
            seconds[stage] = float(value)
    run = (row["finished_at"] - row["started_at"]).total_seconds()
    missing = [stage for stage in _QUEUED_STAGES if stage not in seconds]
    rest = run - sum(seconds.values())
    if missing and rest > 0:
        shares = sum(stage.share for stage in missing)
        for stage in missing:
            seconds[stage] = rest * stage.share / shares
    return {stage: value / work(stage, row["num_frames"], row["num_steps"]) for stage, value in seconds.items()}


def _measure(model: str, resolution: str) -> StageCosts | None:
    finished = (Job.objects.filter(model=model, status=Job.Status.SUCCEEDED, started_at__isnull=False,
                                   finished_at__isnull=False).order_by("-finished_at"))
    fields = ("timings", "num_frames", "num_steps", "started_at", "finished_at")
    rows = list(finished.filter(resolution=resolution).values(*fields)[:SAMPLE])
    if not rows:  # another resolution of the same model is a better guess than none
        rows = list(finished.values(*fields)[:SAMPLE])
    if not rows:
        return None
    sums: dict[Stage, list[float]] = {}
    for row in rows:
        for stage, value in _sample_costs(row).items():
            sums.setdefault(stage, []).append(value)
    return StageCosts({stage: sum(values) / len(values) for stage, values in sums.items()})


def stage_costs(model: str, resolution: str) -> StageCosts | None:
    """The model's measured stage costs at this resolution (cached briefly); None before its first success."""
    key = f"turbosite:stage-costs:{model}:{resolution}"
    cached = cache.get(key)
    if cached is not None:
        return StageCosts({Stage(name): value for name, value in cached[0].items()}) if cached[0] is not None else None
    costs = _measure(model, resolution)
    cache.set(key, ({stage.value: value for stage, value in costs.per_unit.items()} if costs else None,),
              CACHE_SECONDS)
    return costs


def remaining_seconds(job: Any, costs: StageCosts, now: datetime) -> float:
    """Seconds a RUNNING job still needs (see the module docstring for why it never grows)."""
    frames, steps = job.num_frames, job.num_steps
    stage = Stage.parse(job.stage or "")
    if stage not in RUN_ORDER:
        return costs.total(frames, steps)  # claimed, not yet at its first stage
    index = RUN_ORDER.index(stage)
    later = sum(costs.seconds(s, frames, steps) for s in RUN_ORDER[index + 1:])
    cost = costs.seconds(stage, frames, steps)
    fraction = (job.progress - stage.start) / stage.share if stage.share else 0.0
    fraction = max(0.0, min(1.0, fraction))
    timings = job.timings or {}
    before = sum(float(timings.get(TIMING_KEYS[s], 0.0) or 0.0) for s in RUN_ORDER[:index])
    elapsed = (now - job.started_at).total_seconds() - before if job.started_at else 0.0
    current = min(cost * (1.0 - fraction), max(0.0, cost - max(0.0, elapsed)))
    return current + later


@dataclass
class QueueEstimate:
    """One look at the running and queued jobs, giving every active job its ETA (one per request: a page of the
    job list asks for many)."""

    now: datetime = field(default_factory=timezone.now)
    _queued: dict[str, float | None] | None = None

    def _costs(self, model: str, resolution: str) -> StageCosts | None:
        return stage_costs(model, resolution)

    def for_job(self, job: Job) -> float | None:
        if job.status == Job.Status.RUNNING:
            costs = self._costs(job.model, job.resolution)
            return round(remaining_seconds(job, costs, self.now), 1) if costs else None
        if job.status == Job.Status.QUEUED:
            if self._queued is None:
                self._queued = self._simulate()
            return self._queued.get(str(job.id))
        return None

    def _simulate(self) -> dict[str, float | None]:
        running = list(Job.objects.filter(status=Job.Status.RUNNING).only(
            "id", "status", "model", "resolution", "num_frames", "num_steps", "stage", "progress", "started_at",
            "timings", "worker"))
        queued = list(Job.objects.filter(status=Job.Status.QUEUED).order_by("created_at").values(
            "id", "model", "resolution", "num_frames", "num_steps"))
        workers = max(1, len({job.worker for job in running if job.worker}))
        free_at: list[float] = []
        for job in running:
            costs = self._costs(job.model, job.resolution)
            if costs is None:
                return {}  # a worker is busy for a time nothing can estimate: so is everything behind it
            free_at.append(remaining_seconds(job, costs, self.now))
        free_at = sorted(free_at)[-workers:] if len(free_at) > workers else free_at
        free_at += [0.0] * (workers - len(free_at))
        heapq.heapify(free_at)
        etas: dict[str, float | None] = {}
        for row in queued:
            costs = self._costs(row["model"], row["resolution"])
            if costs is None:
                break  # nothing to go on for this job, nor for the ones after it
            start = heapq.heappop(free_at)
            finish = start + costs.total(row["num_frames"], row["num_steps"])
            etas[str(row["id"])] = round(finish, 1)
            heapq.heappush(free_at, finish)
        return etas


def eta_seconds(job: Job, *, now: datetime | None = None) -> float | None:
    """Seconds until `job` should be done; None when finished or when nothing has been measured yet."""
    return QueueEstimate(now=now or timezone.now()).for_job(job)
