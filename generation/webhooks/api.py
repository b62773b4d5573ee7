"""API routes of the webhooks: a job's delivery log, and the caller's signing secret (read and rotate)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.api.serializers import ErrorSerializer
from generation.models import Job
from generation.webhooks import services
from generation.webhooks.models import JobWebhook, WebhookAttempt, WebhookDelivery


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "started_at", "status_code", "latency_ms", "error"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(read_only=True, help_text="The webhook-id header, the same on every attempt.")
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["webhook_id", "event", "url", "status", "attempts", "last_status_code", "created_at",
                  "next_attempt_at", "finished_at", "attempt_log"]


class JobWebhooksSerializer(serializers.Serializer):
    url = serializers.CharField(allow_null=True, help_text="The job's webhook_url; null when it has none.")
    events = serializers.ListField(child=serializers.ChoiceField(choices=JobWebhook.Event.choices))
    deliveries = WebhookDeliverySerializer(many=True)


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="whsec_ followed by the base64 key; verify webhook-signature with it.")
    created_at = serializers.DateTimeField()


class JobWebhooksView(APIView):
    @extend_schema(summary="The webhook deliveries of one of your jobs, with every attempt",
                   responses={200: JobWebhooksSerializer,
                              404: OpenApiResponse(ErrorSerializer, description="No such job among yours.")})
    def get(self, request: Request, pk: str) -> Response:
        job = get_object_or_404(Job, id=pk, owner=request.user)
        subscription = JobWebhook.objects.filter(job=job).first()
        data = {"url": subscription.url if subscription else None,
                "events": subscription.events if subscription else [],
                "deliveries": list(services.deliveries_of(job))}
        return Response(JobWebhooksSerializer(data).data)


class WebhookSecretView(APIView):
    @extend_schema(summary="Your webhook signing secret", responses={200: WebhookSecretSerializer})
    def get(self, request: Request) -> Response:
        return Response(WebhookSecretSerializer(services.secret_for(request.user)).data)


class WebhookSecretRotateView(APIView):
    @extend_schema(summary="Replace your webhook signing secret (the old one stops at once)", request=None,
                   responses={200: WebhookSecretSerializer})
    def post(self, request: Request) -> Response:
        return Response(WebhookSecretSerializer(services.rotate_secret(request.user)).data)
