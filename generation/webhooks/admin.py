"""Operators see every delivery with its attempts (status code, latency, error); nothing here is editable."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from generation.webhooks.models import WebhookAttempt, WebhookDelivery


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ("number", "started_at", "status_code", "latency_ms", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("webhook_id", "job", "event", "status", "attempts", "last_status_code", "created_at",
                    "next_attempt_at", "finished_at")
    list_filter = ("status", "event", "created_at")
    search_fields = ("id", "job__id", "url", "job__owner__username")
    list_select_related = ("job",)
    fields = ("webhook_id", "job", "event", "url", "status", "attempts", "last_status_code", "created_at",
              "next_attempt_at", "finished_at")
    readonly_fields = fields
    inlines = (WebhookAttemptInline,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False
