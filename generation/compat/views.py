"""The API of the system TurboSite replaces (seed runbook section 7), kept so its clients work unchanged.

- POST /v1/turbodiffusion/wan22-i2v/jobs, multipart: prompt (required), image (required), seed, num_steps,
  quantized, duration_seconds -> 200 {"job_id", "status"}.
- GET /v1/turbodiffusion/jobs/<job_id> -> {"job_id", "status", "progress", "output_url" once succeeded,
  "error" once failed or canceled}.

Decisions: no webhooks here (`webhook_url` or `webhook_events` is a 400 pointing at /api/v1/jobs/, which has
them); statuses are lower-case words (queued, running, succeeded, failed, canceled), the style of a JSON API
of that era; `quantized` is accepted and ignored because the deployment's model decides the weights' precision;
`duration_seconds` becomes the nearest valid 4k+1 frame count at the model's 16 fps, and a duration beyond the
model's maximum is a 400 naming the limit; the job runs settings.TURBO_DEFAULT_MODEL. `output_url` stays valid for
one hour (COMPAT_OUTPUT_URL_MAX_AGE), as the runbook promises its clients. Errors have the API's one shape,
{"detail", "code", "field"} (a superset of the old {"detail": message}). Authentication is an API
token, as `Authorization: Token <key>` or `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import logging
import uuid

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation import services, storage
from generation.api.errors import rejection_response
from generation.api.serializers import (
    ErrorSerializer,
    FormBooleanField,
    TableFields,
    absolute_url,
    num_steps_field,
    seed_field,
)
from generation.api.throttles import JobCreateThrottle
from generation.limits import from_table, limit
from generation.models import Job
from turbosite.api_keys.authentication import ApiKeyAuthentication

log = logging.getLogger(__name__)

COMPAT_OUTPUT_URL_MAX_AGE = 3600  # seconds: the seed runbook's "1h presigned URL"


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "bearerTokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The API token, as `Bearer <key>`."}


COMPAT_AUTH = [ApiKeyAuthentication, TokenAuthentication, BearerTokenAuthentication]
# Webhooks stay on /api/v1/jobs/: their body is the v1 job (upper-case states, `id`), not this API's job, and the
# replaced system's clients have no use for a second contract. Sent here, they are a 400 rather than ignored.
WEBHOOK_FIELDS = ("webhook_url", "webhook_events")


def duration_seconds_field() -> serializers.FloatField:
    allowed = limit("duration_seconds")
    return serializers.FloatField(required=False, allow_null=True, min_value=allowed.minimum,
                                  max_value=allowed.maximum,
                                  help_text="Video length at 16 fps; the model's default when absent. Longer than "
                                            "the model makes (10 s for the Wan2.2 models) is a 400 naming the limit.")


class CompatCreateSerializer(TableFields, serializers.Serializer):
    prompt = serializers.CharField(allow_blank=True, trim_whitespace=False)
    image = serializers.FileField()
    seed = from_table(seed_field)
    num_steps = from_table(num_steps_field)
    quantized = FormBooleanField(required=False, allow_null=True,
                                 help_text="Accepted for compatibility and ignored: the model decides.")
    duration_seconds = from_table(duration_seconds_field)


def compat_status(job: Job) -> str:
    return job.status.lower()


def _flat_errors(errors: dict) -> str:
    parts = []
    for field, messages in errors.items():
        text = "; ".join(str(m) for m in (messages if isinstance(messages, list) else [messages]))
        parts.append(f"{field}: {text}")
    return " ".join(parts)


class CompatView(APIView):
    authentication_classes = COMPAT_AUTH

    def handle_exception(self, exc):
        if isinstance(exc, services.JobRejected):
            return rejection_response(exc)
        response = super().handle_exception(exc)
        if isinstance(exc, ValidationError) and isinstance(exc.detail, dict):
            # The replaced system's clients read one message naming every bad field.
            response.data["detail"] = _flat_errors(exc.detail)
        return response


# Lower-case job states as the compatibility API reports them (named CompatStatusEnum in the schema).
COMPAT_STATUSES = tuple((value.lower(), label) for value, label in Job.Status.choices)
_CREATED = inline_serializer("CompatJobCreated", {
    "job_id": serializers.UUIDField(),
    "status": serializers.ChoiceField(choices=COMPAT_STATUSES),
})
_STATE = inline_serializer("CompatJobState", {
    "job_id": serializers.UUIDField(),
    "status": serializers.ChoiceField(choices=COMPAT_STATUSES),
    "progress": serializers.FloatField(),
    "output_url": serializers.URLField(required=False, help_text="Present once succeeded; valid for one hour."),
    "error": serializers.CharField(required=False, help_text="Present once failed or canceled."),
})
_ERROR = ErrorSerializer


class CompatCreateJobView(CompatView):
    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = [JobCreateThrottle]

    @extend_schema(summary="Create an I2V job (compatibility API)", tags=["compatibility"],
                   description="The replaced system's create. Webhooks are not part of it: `webhook_url` or "
                               "`webhook_events` is a 400 (`webhooks_not_supported`); POST /api/v1/jobs/ has them.",
                   request={"multipart/form-data": CompatCreateSerializer},
                   responses={200: _CREATED, 400: _ERROR, 409: _ERROR, 429: _ERROR})
    def post(self, request: Request) -> Response:
        present = [name for name in WEBHOOK_FIELDS if request.data.get(name) not in (None, "")]
        if present:
            # Silently ignored, a client would wait for deliveries that never come.
            raise services.JobRejected(f"{present[0]}: webhooks are not part of the compatibility API; create the "
                                       "job with POST /api/v1/jobs/ to get them", field=present[0],
                                       code="webhooks_not_supported")
        serializer = CompatCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        duration = data.get("duration_seconds")
        num_frames = services.frames_for_duration(duration) if duration else None
        if data.get("quantized") is not None:
            log.info("compat create: quantized=%s requested by user %s (ignored; the model decides)",
                     data["quantized"], request.user.pk)
        job = services.create_job(request.user, image=data["image"], prompt=data["prompt"], seed=data.get("seed"),
                                  num_steps=data["num_steps"], num_frames=num_frames,
                                  idempotency_key=request.headers.get("Idempotency-Key"))
        return Response({"job_id": str(job.id), "status": compat_status(job)})


class CompatJobView(CompatView):
    @extend_schema(summary="Status of an I2V job (compatibility API)", tags=["compatibility"],
                   responses={200: _STATE, 404: OpenApiResponse(_ERROR)})
    def get(self, request: Request, job_id: str) -> Response:
        try:
            job = Job.objects.filter(owner=request.user, id=uuid.UUID(job_id)).first()
        except ValueError:
            job = None
        if job is None:
            raise NotFound(f"no job {job_id} among yours")
        body: dict[str, object] = {"job_id": str(job.id), "status": compat_status(job), "progress": job.progress}
        if job.status == Job.Status.SUCCEEDED and job.output_video.name:
            body["output_url"] = absolute_url(
                request, storage.signed_url(job.output_video.name, max_age=COMPAT_OUTPUT_URL_MAX_AGE))
        if job.status in (Job.Status.FAILED, Job.Status.CANCELED):
            body["error"] = job.error or ("The job was canceled." if job.status == Job.Status.CANCELED else "failed")
        return Response(body)
