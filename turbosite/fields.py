"""Serializer fields shared by the API's apps."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """A CharField that refuses JSON numbers and booleans instead of turning them into text: the schema says
    "string", so `{"name": 0}` is a 400 naming the field, as the OpenAPI document promises."""

    default_error_messages = {"not_a_string": "Must be a string, not {kind}."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string", kind=type(data).__name__)
        return super().to_internal_value(data)
