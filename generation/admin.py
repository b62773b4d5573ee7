"""The operators' view of jobs: find them, act on them (cancel, retry, requeue), watch the queue and the workers
(their registry rows, with what each one's last heartbeat read of its GPUs).

Jobs are read-only here (their state changes only through the state machine), prompts are shown escaped, and
previews use the same short-lived signed links as the API.
"""

from __future__ import annotations

import json
from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, Max, Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince

from generation import queue, services, storage
from generation.models import Job, Worker

PREVIEW_WIDTH = 480
GIB = 2**30


def _link(name: str) -> str | None:
    if not name:
        return None
    try:
        return storage.signed_url(name)
    except Exception:  # a preview must never break the admin page
        return None


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "status", "model", "resolution", "num_frames", "progress_percent", "stage",
                    "worker", "created_at", "poster_thumbnail")
    list_display_links = ("id",)
    list_filter = ("status", "model", ("owner", admin.RelatedOnlyFieldListFilter), "created_at")
    search_fields = ("id", "prompt", "owner__username", "owner__email")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    list_per_page = 50
    actions = ("cancel_jobs", "retry_jobs", "requeue_jobs")
    fieldsets = (
        ("Request", {"fields": ("owner", "prompt", "model", "seed", "num_steps", "resolution", "num_frames",
                                "adaptive_resolution", "resize_mode", "ode", "retry_of", "idempotency_key", "input_preview")}),
        ("Progress", {"fields": ("status", "progress", "stage", "error", "error_detail", "attempts", "worker", "gpu_name",
                                 "heartbeat_at", "created_at", "started_at", "finished_at")}),
        ("Result", {"fields": ("video_preview", "width", "height", "frames", "fps", "bytes", "peak_memory_bytes",
                               "timings_table", "output_video", "poster", "input_image")}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Job | None = None) -> list[str]:
        # Every field: a job changes state only through the state machine (the actions below), never by a form.
        return [name for fieldset in self.fieldsets for name in fieldset[1]["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs come from the site and the API, where the image is validated and stored

    # -- columns and previews ------------------------------------------------------------------------------

    @admin.display(description="progress", ordering="progress")
    def progress_percent(self, job: Job) -> str:
        return f"{job.progress * 100:.0f}%"

    @admin.display(description="poster")
    def poster_thumbnail(self, job: Job) -> SafeString | str:
        url = _link(job.poster.name) if job.status == Job.Status.SUCCEEDED else None
        return format_html('<img src="{}" alt="poster" style="height:48px">', url) if url else "—"

    @admin.display(description="input image")
    def input_preview(self, job: Job) -> SafeString | str:
        url = _link(job.input_image.name)
        return format_html('<img src="{}" alt="input" style="max-width:{}px">', url, PREVIEW_WIDTH) if url else "—"

    @admin.display(description="video")
    def video_preview(self, job: Job) -> SafeString | str:
        if job.status != Job.Status.SUCCEEDED:
            return "—"
        video, poster = _link(job.output_video.name), _link(job.poster.name)
        if not video:
            return "—"
        return format_html('<video src="{}" poster="{}" controls preload="metadata" style="max-width:{}px"></video>',
                           video, poster or "", PREVIEW_WIDTH)

    @admin.display(description="timings (s)")
    def timings_table(self, job: Job) -> SafeString | str:
        if not job.timings:
            return "—"
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>",
                                ((stage, _seconds(value)) for stage, value in job.timings.items()))
        return format_html("<table>{}</table>", rows)

    # -- actions ---------------------------------------------------------------------------------------------

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(services.cancel_job(job) for job in queryset)
        skipped = queryset.count() - done
        self.message_user(request, f"Canceled {done} job(s); {skipped} had already finished.", messages.SUCCESS)

    @admin.action(description="Retry selected jobs (new jobs, same parameters and seed)")
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        made, problems = 0, []
        for job in queryset:
            try:
                services.retry_job(job)
                made += 1
            except services.JobRejected as exc:
                problems.append(f"{job.id}: {exc.message}")
        self.message_user(request, f"Created {made} retry job(s).", messages.SUCCESS)
        for problem in problems:
            self.message_user(request, problem, messages.WARNING)

    @admin.action(description="Requeue selected jobs (running: back to the queue; queued: send again)")
    def requeue_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = skipped = 0
        for job in queryset:
            try:
                if services.requeue_job(job):
                    done += 1
                else:
                    skipped += 1
            except Exception as exc:  # the broker refused the message; the row is QUEUED, so it can be retried
                self.message_user(request, f"{job.id}: could not reach the queue ({type(exc).__name__}: {exc}); "
                                           "requeue it again when the broker is back.", messages.ERROR)
        self.message_user(request, f"Requeued {done} job(s); {skipped} finished job(s) left alone (use retry).",
                          messages.SUCCESS if done else messages.WARNING)

    # -- queue page ------------------------------------------------------------------------------------------

    def get_urls(self):
        return [path("queue/", self.admin_site.admin_view(self.queue_view), name="generation_job_queue"),
                *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        extra = {"queue_url": reverse("admin:generation_job_queue"), **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)

    def queue_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "title": "Queue and workers", **queue_snapshot()}
        return TemplateResponse(request, "admin/generation/job/queue.html", context)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """Each GPU worker as it last reported itself. Read-only: the rows are the workers' own heartbeats; deleting
    one only forgets a worker that died without retiring (a live one writes it back on its next beat)."""

    list_display = ("name", "is_live", "heartbeat_at", "started_at", "gpu_summary", "installed_models")
    search_fields = ("name",)
    fields = ("name", "is_live", "started_at", "heartbeat_at", "gpu_table", "weights_table")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        return False

    @admin.display(description="live", boolean=True)
    def is_live(self, worker: Worker) -> bool:
        return timezone.now() - worker.heartbeat_at <= timedelta(seconds=settings.TURBO_HEARTBEAT_STALE_S)

    @admin.display(description="GPUs")
    def gpu_summary(self, worker: Worker) -> SafeString | str:
        gpus = _readings(worker)
        if not gpus:
            return "no GPU"
        return format_html_join(mark_safe("<br>"), "{}", ((_gpu_line(gpu),) for gpu in gpus))

    @admin.display(description="installed models")
    def installed_models(self, worker: Worker) -> str:
        weights = worker.weights if isinstance(worker.weights, dict) else {}
        names = [name for name, state in weights.items() if isinstance(state, dict) and state.get("installed")]
        return ", ".join(sorted(names)) or "—"

    @admin.display(description="GPUs (last heartbeat)")
    def gpu_table(self, worker: Worker) -> SafeString | str:
        gpus = _readings(worker)
        if not gpus:
            return f"no GPU (last heartbeat {timesince(worker.heartbeat_at)} ago)"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((gpu["index"], gpu.get("name") or "—", _gib(gpu.get("memory_used_bytes")),
              _gib(gpu.get("memory_total_bytes")), _gib(gpu.get("memory_reserved_bytes")),
              _percent(gpu.get("utilization_percent"))) for gpu in gpus))
        return format_html("<table><tr><th>GPU</th><th>name</th><th>memory used (all processes)</th>"
                           "<th>memory total</th><th>reserved by this worker</th><th>utilisation</th></tr>{}"
                           "</table>", rows)

    @admin.display(description="weights")
    def weights_table(self, worker: Worker) -> SafeString | str:
        weights = worker.weights if isinstance(worker.weights, dict) else {}
        if not weights:
            return "—"
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", (
            (name, "installed" if state.get("installed") else "missing: " + ", ".join(state.get("missing") or []))
            for name, state in sorted(weights.items()) if isinstance(state, dict)))
        return format_html("<table>{}</table>", rows)


def _readings(worker: Worker) -> list[dict[str, object]]:
    """The readings this page can label: the JSON is the worker's, so anything without an index is skipped, as
    /metrics skips it."""
    return [gpu for gpu in (worker.gpus or []) if isinstance(gpu, dict) and isinstance(gpu.get("index"), int)]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _gib(value: object) -> str:
    number = _number(value)
    return "—" if number is None else f"{number / GIB:.1f} GiB"


def _percent(value: object) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:.0f}%"


def _gpu_line(gpu: dict[str, object]) -> str:
    """"GPU 0: 41.2/139.8 GiB, 87%"; a value the worker could not read is a dash (a group's supervisor reads no
    total, for one), never a made-up zero."""
    used, total = _number(gpu.get("memory_used_bytes")), _number(gpu.get("memory_total_bytes"))
    if used is not None and total is not None:
        memory = f"{used / GIB:.1f}/{total / GIB:.1f} GiB"
    else:
        memory = f"{_gib(used)} used" if used is not None else "memory —"
    return f"GPU {gpu['index']}: {memory}, {_percent(gpu.get('utilization_percent'))}"


def _seconds(value: object) -> str:
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return json.dumps(value)


def queue_snapshot(now=None) -> dict[str, object]:
    """What the queue page shows: depth (broker and database, and how the two match up), running jobs, and each
    worker's last heartbeat."""
    now = now or timezone.now()
    stale_after = timedelta(seconds=settings.TURBO_HEARTBEAT_STALE_S)
    counts = dict(Job.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    messages_match = match_messages_to_jobs()
    broker_depth = messages_match["messages"] if messages_match else None
    running = list(Job.objects.filter(status=Job.Status.RUNNING).select_related("owner").order_by("started_at"))
    for job in running:
        job.heartbeat_age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
        job.is_stale = job.heartbeat_at is None or now - job.heartbeat_at > stale_after
    workers = list(
        Job.objects.exclude(worker="").values("worker")
        .annotate(last_heartbeat=Max("heartbeat_at"), running=Count("id", filter=Q(status=Job.Status.RUNNING)),
                  finished=Count("id", filter=Q(status__in=Job.FINISHED)))
        .order_by("-last_heartbeat")
    )
    for worker in workers:
        beat = worker["last_heartbeat"]
        worker["age"] = (now - beat).total_seconds() if beat else None
        worker["is_stale"] = bool(worker["running"]) and (beat is None or now - beat > stale_after)
    return {
        "broker_depth": broker_depth,
        "messages_match": messages_match,
        "queued_in_db": counts.get(Job.Status.QUEUED, 0),
        "status_counts": [(label, counts.get(value, 0)) for value, label in Job.Status.choices],
        "running_jobs": running,
        "workers": workers,
        "stale_after_s": int(stale_after.total_seconds()),
        "now": now,
    }


def match_messages_to_jobs() -> dict[str, int] | None:
    """The broker's waiting messages against the QUEUED rows, so the two counts explain each other: messages for
    queued jobs, extra copies for the same job (a resend), messages whose job is no longer queued (canceled,
    finished or deleted: a worker drops them), and queued jobs with no waiting message (a worker already took it,
    or it was lost and the reaper sends it again after TURBO_QUEUED_RESEND_S). None when the broker is unreachable."""
    try:
        job_ids = queue.waiting_job_ids()
    except Exception:
        job_ids = None
    if job_ids is None:
        return None
    queued = {str(job_id) for job_id in Job.objects.filter(status=Job.Status.QUEUED).values_list("id", flat=True)}
    waiting = [job_id for job_id in job_ids if job_id in queued]
    return {
        "messages": len(job_ids),
        "for_queued_jobs": len(set(waiting)),
        "duplicates": len(waiting) - len(set(waiting)),
        "for_other_jobs": len(job_ids) - len(waiting),
        "queued_without_message": len(queued - set(waiting)),
    }
