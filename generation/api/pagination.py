"""Paging and filtering for job lists. Bad values are 400s naming the parameter, in the API's error shape."""

from __future__ import annotations

import re

from django.core.paginator import InvalidPage
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination

from generation.models import Job


class JobPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_number(self, request, paginator) -> int:
        raw = request.query_params.get(self.page_query_param)
        if raw is None or raw == "":
            return 1
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise ValidationError({self.page_query_param: [f"page must be a whole number from 1, got {raw[:40]!r}"]})
        return int(raw)

    def get_page_size(self, request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None or raw == "":
            return self.page_size
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({self.page_size_query_param: [
                f"page_size must be a whole number from 1 to {self.max_page_size}, got {raw[:40]!r}"]})
        return int(raw)

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        page_size = self.get_page_size(request)
        paginator = self.django_paginator_class(queryset, page_size)
        number = self.get_page_number(request, paginator)
        try:
            self.page = paginator.page(number)
        except InvalidPage:
            raise NotFound({self.page_query_param: [f"page {number} does not exist; the last page is "
                                                    f"{paginator.num_pages}"]}) from None
        return list(self.page)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters


def _any_case(word: str) -> str:
    return "".join(f"[{ch.upper()}{ch.lower()}]" for ch in word)


_WORD = "(?:" + "|".join(_any_case(value) for value in Job.Status.values) + ")"
# What filter_by_status accepts, as the OpenAPI schema states it: known states, any case, comma-separated.
STATUS_FILTER_PATTERN = rf"^ *{_WORD} *(?:, *{_WORD} *)*$"
_STATUS_FILTER = re.compile(STATUS_FILTER_PATTERN)


def filter_by_status(queryset: QuerySet[Job], raw: str | None) -> QuerySet[Job]:
    """`?status=running` or `?status=queued,running` (any case). Anything else is a 400 naming the valid values."""
    if raw is None:
        return queryset
    if not _STATUS_FILTER.match(raw):
        shown = ", ".join(value for value in (part.strip() for part in raw.split(",")) if value.upper()
                          not in Job.Status.values)[:80] or repr(raw[:40])
        raise ValidationError({"status": [f"unknown status {shown}; use one or more of "
                                          f"{', '.join(Job.Status.values)} (comma-separated)"]})
    wanted = [value.strip().upper() for value in raw.split(",")]
    return queryset.filter(status__in=wanted)
