"""Server-rendered pages. Thin: parsing is in generation.pages.forms, every rule and state change in
generation.services, and links to stored files are signed only after the job was fetched with owner=request.user."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from generation import services, storage
from generation.api.serializers import JobSerializer
from generation.models import Job
from generation.pages.forms import NewVideoForm
from generation.stages import label_for, stage_labels
from generation.webhooks import services as webhooks
from turbosite.api_errors import RETRY_AFTER_SECONDS, error_body

HISTORY_PAGE_SIZE = 24


def _owned_job(request: HttpRequest, job_id: Any) -> Job:
    # Another user's job is a 404, never a 403: its existence is not revealed.
    return get_object_or_404(Job, id=job_id, owner=request.user)


def _link(name: str, download_name: str | None = None) -> str | None:
    return storage.signed_url(name, download_name=download_name) if name else None


def _card(job: Job) -> dict[str, Any]:
    """What the gallery shows for one (already ownership-checked) job."""
    succeeded = job.status == Job.Status.SUCCEEDED
    return {
        "job": job,
        "picture": _link(job.poster.name) if succeeded and job.poster else _link(job.input_image.name),
        "stage_label": label_for(job.stage),
    }


def _wants_json(request: HttpRequest) -> bool:
    """A script posting the form (fetch with `Accept: application/json`) gets JSON answers instead of pages."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _json_error(status: int, detail: str, code: str, field: str | None) -> JsonResponse:
    response = JsonResponse(error_body(detail, code, field), status=status)
    if status in RETRY_AFTER_SECONDS:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS[status])
    return response


def _form_error(form: NewVideoForm) -> JsonResponse:
    """The form's first error in the API's one error shape."""
    for name, errors in form.errors.as_data().items():
        error = errors[0]
        message = " ".join(error.messages)
        field = None if name == "__all__" else name
        return _json_error(400, f"{field}: {message}" if field else message, error.code or "invalid", field)
    return _json_error(400, "The form is not valid.", "invalid", None)


@login_required
@require_http_methods(["GET", "POST"])
def new_video(request: HttpRequest) -> HttpResponse:
    """The form; posted by the browser it answers pages, posted by a script asking for JSON it answers like
    POST /api/v1/jobs/ (201 with the job, or the API's error shape). Both accept `webhook_url` and
    `webhook_events`, checked and saved by the same service as the API's."""
    form = NewVideoForm(request.POST or None, request.FILES or None)
    status = 400 if request.method == "POST" else 200
    as_json = request.method == "POST" and _wants_json(request)
    if request.method == "POST" and form.is_valid():
        try:
            subscribe = webhooks.subscription_hook(request.POST.get("webhook_url"),
                                                   request.POST.getlist("webhook_events"),
                                                   base_url=request.build_absolute_uri("/"))
            job = services.create_job(request.user, **form.service_arguments(), attach=subscribe)
        except services.JobRejected as exc:
            if as_json:
                return _json_error(exc.status_code, exc.message, exc.code, exc.field)
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            status = exc.status_code  # 409 weights missing, 413 too large, 429 too many jobs, 503 queue down
        else:
            if as_json:
                response = JsonResponse(JobSerializer(job, context={"request": request}).data, status=201)
                response["Location"] = request.build_absolute_uri(reverse("api:job-detail", args=[job.id]))
                return response
            messages.success(request, "Your video is queued. This page follows it until it is ready.")
            return redirect("job", job_id=job.id)
    elif as_json:
        return _form_error(form)
    return render(request, "generation/new_video.html", {"form": form}, status=status)


@login_required
def history(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.filter(owner=request.user).order_by("-created_at")
    status = request.GET.get("status", "").upper()
    if status in Job.Status.values:
        jobs = jobs.filter(status=status)
    else:
        status = ""
    page = Paginator(jobs, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "generation/history.html", {
        "page": page,
        "cards": [_card(job) for job in page.object_list],
        "status_filter": status,
        "statuses": Job.Status.choices,
        "stage_labels": stage_labels(),
    })


@login_required
def job_detail(request: HttpRequest, job_id: Any) -> HttpResponse:
    job = _owned_job(request, job_id)
    succeeded = job.status == Job.Status.SUCCEEDED
    context = {
        "job": job,
        "active": job.status in Job.ACTIVE,
        "video_url": _link(job.output_video.name) if succeeded else None,
        "poster_url": _link(job.poster.name) if succeeded else None,
        "download_url": _link(job.output_video.name, f"turbosite-{job.id}.mp4") if succeeded else None,
        "input_url": _link(job.input_image.name),
        "stage_label": label_for(job.stage),
        "stage_labels": stage_labels(),
        "queue_position": services.queue_position(job),
        "eta_seconds": services.eta_seconds(job),
        "timings": sorted(job.timings.items(), key=lambda item: -float(item[1])) if job.timings else [],
        "api_url": reverse("api:job-detail", kwargs={"pk": job.id}),
        "poll_ms": settings.TURBO_PAGE_POLL_MS,
    }
    return render(request, "generation/job_detail.html", context)


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: Any) -> HttpResponse:
    job = _owned_job(request, job_id)
    if services.cancel_job(job):
        messages.success(request, "Canceled. A running job stops after its current step.")
    else:
        messages.warning(request, f"This job already ended ({job.get_status_display().lower()}); nothing to cancel.")
    return redirect("job", job_id=job.id)


@login_required
@require_POST
def job_rerun(request: HttpRequest, job_id: Any) -> HttpResponse:
    job = _owned_job(request, job_id)
    try:
        new_job = services.retry_job(job)
    except services.JobRejected as exc:
        messages.error(request, exc.message)
        return redirect("job", job_id=job.id)
    messages.success(request, f"Queued again with the same settings and seed {new_job.seed}.")
    return redirect("job", job_id=new_job.id)


@login_required
@require_POST
def job_delete(request: HttpRequest, job_id: Any) -> HttpResponse:
    job = _owned_job(request, job_id)
    services.delete_job(job)
    messages.success(request, "The job and its files were deleted.")
    return redirect("history")
