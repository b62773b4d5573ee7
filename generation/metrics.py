"""`/metrics` in the Prometheus text format (0.0.4), for staff sessions or `Authorization: Bearer
$TURBO_METRICS_TOKEN`.

Everything is read from the database and the broker at scrape time, so one scrape of any web process sees the
whole deployment (workers on other hosts included) and no process keeps counters that a restart would lose.
The histograms count the finished jobs the database still holds (retention removes old ones, which Prometheus
reads as a counter reset); stage durations come from the most recent STAGE_SAMPLE jobs' timings.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from generation.models import Job, Worker
from turbosite import broker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_BUCKETS_S = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
STAGE_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STAGE_SAMPLE = 5000
WORKER_WINDOW = timedelta(hours=24)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, help_text: str, series: dict[tuple[tuple[str, str], ...], list[float]],
                  buckets: tuple[float, ...]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        for label_items, values in sorted(series.items()):
            labels = dict(label_items)
            for bound in buckets:
                count = sum(1 for v in values if v <= bound)
                self.lines.append(f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {count}")
            self.lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {len(values)}")
            self.lines.append(f"{name}_sum{_labels(labels)} {_number(sum(values))}")
            self.lines.append(f"{name}_count{_labels(labels)} {len(values)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render() -> str:
    out = Exposition()
    counts = dict(Job.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    out.metric("turbosite_jobs", "gauge", "Jobs in the database by state.",
               (({"status": status}, counts.get(status, 0)) for status in Job.Status.values))

    depths = []
    for queue in (broker.GPU_QUEUE, broker.WEBHOOK_QUEUE, broker.MAINTENANCE_QUEUE):
        depth = broker.queue_depth(queue)
        if depth is not None:
            depths.append(({"queue": queue}, depth))
    out.metric("turbosite_queue_depth", "gauge", "Messages waiting in a queue (absent when the broker is down).",
               depths)

    runs = (Job.objects.filter(status__in=Job.FINISHED, started_at__isnull=False, finished_at__isnull=False)
            .annotate(run=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField()))
            .values_list("model", "status", "run"))
    job_series: dict[tuple[tuple[str, str], ...], list[float]] = defaultdict(list)
    for model, status, run in runs.iterator():
        job_series[(("model", model), ("status", status))].append(run.total_seconds())
    out.histogram("turbosite_job_duration_seconds", "Wall time from claim to end of finished jobs.", job_series,
                  JOB_BUCKETS_S)

    stage_series: dict[tuple[tuple[str, str], ...], list[float]] = defaultdict(list)
    recent = (Job.objects.filter(status=Job.Status.SUCCEEDED).order_by("-finished_at")
              .values_list("model", "timings")[:STAGE_SAMPLE])
    for model, timings in recent:
        for stage, seconds in (timings or {}).items():
            if isinstance(seconds, int | float) and stage != "total":
                stage_series[(("model", model), ("stage", stage))].append(float(seconds))
    out.histogram("turbosite_stage_duration_seconds",
                  f"Seconds per pipeline stage of the last {STAGE_SAMPLE} successful jobs.", stage_series,
                  STAGE_BUCKETS_S)

    since = timezone.now() - WORKER_WINDOW
    workers = (Job.objects.filter(heartbeat_at__gte=since).exclude(worker="")
               .values("worker", "gpu_name").annotate(peak=Max("peak_memory_bytes"), seen=Max("heartbeat_at")))
    stale = timezone.now() - timedelta(seconds=settings.TURBO_HEARTBEAT_STALE_S)
    busy = set(Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__gte=stale)
               .values_list("worker", flat=True))
    out.metric("turbosite_worker_peak_memory_bytes", "gauge",
               "Highest GPU memory a worker's jobs reported in the last 24 h (from job results).",
               (({"worker": w["worker"], "gpu": w["gpu_name"]}, w["peak"]) for w in workers if w["peak"] is not None))
    out.metric("turbosite_worker_busy", "gauge",
               "1 while a worker holds a running job with a fresh heartbeat (workers seen in the last 24 h).",
               (({"worker": w["worker"], "gpu": w["gpu_name"]}, int(w["worker"] in busy)) for w in workers))
    out.metric("turbosite_worker_last_heartbeat_timestamp_seconds", "gauge",
               "Unix time of a worker's latest heartbeat on any job.",
               (({"worker": w["worker"], "gpu": w["gpu_name"]}, w["seen"].timestamp()) for w in workers))

    _gpu_gauges(out)

    from generation.webhooks.models import WebhookAttempt, WebhookDelivery

    deliveries = dict(WebhookDelivery.objects.values_list("status").annotate(n=Count("id"))
                      .values_list("status", "n"))
    out.metric("turbosite_webhook_deliveries", "gauge", "Webhook deliveries by result.",
               (({"result": status}, deliveries.get(status, 0)) for status in WebhookDelivery.Status.values))
    attempts: dict[str, int] = defaultdict(int)
    for code, n in WebhookAttempt.objects.values_list("status_code").annotate(n=Count("id")):
        result = "error" if code is None else f"{code // 100}xx"
        attempts[result] += n
    out.metric("turbosite_webhook_attempts", "gauge", "Webhook attempts by outcome (status class, or error).",
               (({"result": result}, n) for result, n in sorted(attempts.items())))
    return out.text()


# (field of a reading in Worker.gpus, metric, help): what each live worker's last heartbeat read of its GPUs.
GPU_GAUGES = (
    ("memory_used_bytes", "turbosite_worker_gpu_memory_used_bytes",
     "Device memory in use on a worker's GPU (all processes), from its last heartbeat."),
    ("memory_total_bytes", "turbosite_worker_gpu_memory_total_bytes",
     "Device memory of a worker's GPU, from its last heartbeat."),
    ("memory_reserved_bytes", "turbosite_worker_gpu_memory_reserved_bytes",
     "GPU memory the worker process's PyTorch allocator holds, from its last heartbeat."),
    ("utilization_percent", "turbosite_worker_gpu_utilization_percent",
     "Percent of the last sample period a kernel ran on a worker's GPU (NVML), from its last heartbeat."),
)


def _gpu_gauges(out: Exposition) -> None:
    """One sample per live worker, GPU and value it could read; a worker without a GPU (or a value its host
    cannot read) has no sample at all, rather than a made-up zero."""
    readings = [(worker, gpu) for worker, gpus in Worker.live().order_by("name").values_list("name", "gpus")
                for gpu in (gpus or []) if isinstance(gpu, dict) and isinstance(gpu.get("index"), int)]
    for field, name, help_text in GPU_GAUGES:
        out.metric(name, "gauge", help_text,
                   (({"worker": worker, "gpu_index": str(gpu["index"])}, gpu[field]) for worker, gpu in readings
                    if isinstance(gpu.get(field), int | float) and not isinstance(gpu.get(field), bool)))


def _allowed(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    token = settings.TURBO_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        anonymous = not request.headers.get("Authorization") and not request.user.is_authenticated
        response = HttpResponse("Metrics need a staff login or the metrics token (Authorization: Bearer ...).\n",
                                status=401 if anonymous else 403, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(render(), content_type=CONTENT_TYPE)
