"""/api/v1/keys/: list, create (the key is in the answer once) and revoke your API keys."""

from __future__ import annotations

from datetime import timedelta

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.api.serializers import ErrorSerializer
from turbosite.api_keys import services
from turbosite.api_keys.models import ApiKey
from turbosite.fields import StrictCharField

MAX_DAYS = 3650


class ApiKeySerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True,
                                   help_text="The start of the key, to tell keys apart.")
    state = serializers.ChoiceField(choices=["active", "expired", "revoked"], read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "read_only", "state", "created_at", "expires_at", "last_used_at",
                  "revoked_at"]
        read_only_fields = fields


class NewApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself. Shown this once; only a hash is kept.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=services.MAX_NAME_CHARS, help_text="What the key is for.")
    read_only = serializers.BooleanField(required=False, default=False,
                                         help_text="Allow GET only: no creating, canceling or deleting.")
    expires_in_days = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_DAYS,
                                               help_text="Days until the key stops working; never when absent.")


def _rejected(exc: services.KeyRejected) -> Response:
    body = {"detail": exc.message, "code": "invalid"}
    if exc.field:
        body["field"] = exc.field
    return Response(body, status=status.HTTP_400_BAD_REQUEST)


class ApiKeyListView(APIView):
    @extend_schema(summary="Your API keys (never the keys themselves)", responses={200: ApiKeySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(ApiKeySerializer(services.keys_of(request.user), many=True).data)

    @extend_schema(summary="Make an API key; the answer holds the key, once", request=ApiKeyCreateSerializer,
                   responses={201: NewApiKeySerializer,
                              400: OpenApiResponse(ErrorSerializer, description="A parameter is invalid."),
                              403: OpenApiResponse(ErrorSerializer, description="Read-only keys cannot make keys.")})
    def post(self, request: Request) -> Response:
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        days = serializer.validated_data.get("expires_in_days")
        try:
            made = services.create_key(request.user, name=serializer.validated_data["name"],
                                       read_only=serializer.validated_data["read_only"],
                                       expires_at=timezone.now() + timedelta(days=days) if days else None)
        except services.KeyRejected as exc:
            return _rejected(exc)
        data = NewApiKeySerializer(made.api_key).data
        data["key"] = made.key
        return Response(data, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(APIView):
    @extend_schema(summary="Revoke one of your API keys (it stops working at once)", responses={
        204: None, 404: OpenApiResponse(ErrorSerializer, description="No such key among yours.")})
    def delete(self, request: Request, pk: int) -> Response:
        services.revoke_key(get_object_or_404(ApiKey, pk=pk, user=request.user))
        return Response(status=status.HTTP_204_NO_CONTENT)
