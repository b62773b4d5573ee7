"""The v1 REST API: jobs, models and tokens. Every job lookup goes through the requester's own jobs, so another
user's job is a 404 on every route, and file links are only made for jobs that passed that filter."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation import loras_catalog, models_catalog, services
from generation.api.errors import RejectionMixin
from generation.api.pagination import STATUS_FILTER_PATTERN, JobPagination, filter_by_status
from generation.api.serializers import (
    ErrorSerializer,
    JobCreateSerializer,
    JobSerializer,
    ModelSerializer,
    TokenRequestSerializer,
    TokenResponseSerializer,
)
from generation.api.throttles import JobCreateThrottle
from generation.lifecycle import services as lifecycle
from generation.models import Job
from generation.webhooks import services as webhooks
from turbosite.accounts.lockout import LOCKOUT_CODE, cool_off_seconds, lockout_message

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="A parameter is invalid; the message names it."),
    404: OpenApiResponse(ErrorSerializer, description="No such job among yours."),
}


@extend_schema_view(
    list=extend_schema(
        summary="Your jobs, newest first",
        parameters=[OpenApiParameter("status", {"type": "string", "pattern": STATUS_FILTER_PATTERN},
                                     description="Filter: one or more of " + ", ".join(Job.Status.values)
                                     + " (comma-separated, any case).")],
    ),
    retrieve=extend_schema(summary="One of your jobs", responses={200: JobSerializer, 404: _ERRORS[404]}),
    destroy=extend_schema(summary="Delete a job and its files (a running job is canceled first)",
                          responses={204: None, 404: _ERRORS[404]}),
)
class JobViewSet(RejectionMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                 viewsets.GenericViewSet):
    serializer_class = JobSerializer
    pagination_class = JobPagination
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self):
        queryset = Job.objects.filter(owner=self.request.user).select_related("expiry").order_by("-created_at")
        if self.action == "list":
            queryset = filter_by_status(queryset, self.request.query_params.get("status"))
        return queryset

    def get_throttles(self):
        if self.action in ("create", "retry"):
            return [JobCreateThrottle()]
        return super().get_throttles()

    def _job_response(self, job: Job, status_code: int) -> Response:
        data = JobSerializer(job, context=self.get_serializer_context()).data
        headers = {"Location": self.request.build_absolute_uri(reverse("api:job-detail", args=[job.id]))}
        return Response(data, status=status_code, headers=headers)

    @extend_schema(
        summary="Submit an image and a prompt",
        request={"multipart/form-data": JobCreateSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="Repeat a request safely: the same key and body return the first "
                                                 "job (200); the same key with another body is a 422."),
                    OpenApiParameter("Prefer", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="`wait=N` (1 to 60): answer once the job has finished or after N "
                                                 "seconds, whichever comes first (the answer then says "
                                                 "`Preference-Applied: wait=N`)."),
                    OpenApiParameter("Cancel-After", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="A deadline: seconds (`90`) or a duration (`90s`, `5m`, `1h30m`), "
                                                 "5 s to 7 days. A job not finished by then ends CANCELED, its "
                                                 "`error` saying why.")],
        responses={
            201: JobSerializer,
            200: OpenApiResponse(JobSerializer, description="Replay of an earlier request with this Idempotency-Key."),
            400: OpenApiResponse(ErrorSerializer, description="A parameter is invalid (the message names it), or "
                                 "webhook_url's host is not a public address."),
            409: OpenApiResponse(ErrorSerializer, description="The model's weights are not installed."),
            413: OpenApiResponse(ErrorSerializer, description="The image file is too large."),
            422: OpenApiResponse(ErrorSerializer, description="Idempotency-Key reused with a different body."),
            429: OpenApiResponse(ErrorSerializer, description="Too many active jobs, or too many submissions."),
            503: OpenApiResponse(ErrorSerializer, description="Storage or queue unavailable; retry."),
        },
    )
    def create(self, request: Request) -> Response:
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        arguments = dict(serializer.validated_data)
        subscribe = webhooks.subscription_hook(arguments.pop("webhook_url", None),
                                               arguments.pop("webhook_events", None),
                                               base_url=request.build_absolute_uri("/"))
        wait_s = lifecycle.parse_prefer_wait(request.headers.get("Prefer"))
        cancel_after = request.headers.get("Cancel-After")
        cancel_after_s = lifecycle.parse_cancel_after(cancel_after)

        def attach(job: Job) -> None:
            if subscribe is not None:
                subscribe(job)
            if cancel_after_s is not None:
                lifecycle.set_deadline(job, cancel_after_s, cancel_after or "")

        submission = services.submit_job(request.user, **arguments, attach=attach,
                                         idempotency_key=request.headers.get("Idempotency-Key"))
        waited = wait_s is not None and lifecycle.wait_for_job(submission.job, wait_s)
        response = self._job_response(submission.job,
                                      status.HTTP_201_CREATED if submission.created else status.HTTP_200_OK)
        if waited:
            response["Preference-Applied"] = f"wait={wait_s}"
        return response

    def perform_destroy(self, instance: Job) -> None:
        services.delete_job(instance)

    @extend_schema(summary="Cancel a queued or running job", request=None,
                   responses={200: JobSerializer, 404: _ERRORS[404],
                              409: OpenApiResponse(ErrorSerializer, description="The job had already finished.")})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        if not services.cancel_job(job):
            job.refresh_from_db()
            if job.status != Job.Status.CANCELED:
                raise services.JobRejected(f"Job {job.id} already finished ({job.status}); nothing to cancel.", 409,
                                           code="already_finished")
        return self._job_response(job, status.HTTP_200_OK)

    @extend_schema(summary="Run a job again: a new job with the same image, parameters and seed", request=None,
                   responses={201: JobSerializer, 404: _ERRORS[404],
                              409: OpenApiResponse(ErrorSerializer, description="The input image is gone."),
                              429: OpenApiResponse(ErrorSerializer, description="Too many active jobs.")})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        return self._job_response(services.retry_job(self.get_object()), status.HTTP_201_CREATED)


class ModelListView(APIView):
    @extend_schema(summary="Models this site knows and whether their weights are installed",
                   responses={200: ModelSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(ModelSerializer(loras_catalog.with_loras(models_catalog.list_models()), many=True).data)


class TokenView(APIView):
    """Username and password for an API token (the same token each time; revoke it from the account page)."""

    authentication_classes: list = []  # no session, so no CSRF dance for scripts
    permission_classes = [AllowAny]
    parser_classes = [FormParser, MultiPartParser, JSONParser]

    @extend_schema(summary="Exchange a username and password for an API token", request=TokenRequestSerializer,
                   responses={200: TokenResponseSerializer, 400: _ERRORS[400],
                              429: OpenApiResponse(ErrorSerializer, description="Too many failed logins for this "
                                                   "account: locked for the time in Retry-After.")}, auth=[])
    def post(self, request: Request) -> Response:
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        if not serializer.is_valid():
            # django-axes marks the request it was handed (this DRF request) when the login is, or just became,
            # locked; answer as the login page does instead of "Unable to log in".
            if getattr(request, "axes_locked_out", False) or getattr(request._request, "axes_locked_out", False):
                return Response({"detail": lockout_message(request._request), "code": LOCKOUT_CODE}, status=429,
                                headers={"Retry-After": str(cool_off_seconds(request._request))})
            serializer.is_valid(raise_exception=True)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})
