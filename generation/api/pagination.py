"""Paging and filtering for job lists."""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination

from generation.models import Job


class JobPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


def filter_by_status(queryset: QuerySet[Job], raw: str | None) -> QuerySet[Job]:
    """`?status=running` or `?status=queued,running` (any case). Unknown values are a 400 naming the valid ones."""
    if not raw:
        return queryset
    wanted = [value.strip().upper() for value in raw.split(",") if value.strip()]
    unknown = [value for value in wanted if value not in Job.Status.values]
    if unknown:
        raise ValidationError({"status": [f"unknown status {', '.join(unknown)}; use one or more of "
                                          f"{', '.join(Job.Status.values)} (comma-separated)"]})
    return queryset.filter(status__in=wanted)
