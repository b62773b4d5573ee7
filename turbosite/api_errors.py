"""One error shape for every API answer: `{"detail": message for a person, "code": stable word for programs,
"field": the parameter at fault or null}`.

- DRF's exception handler (settings.REST_FRAMEWORK["EXCEPTION_HANDLER"]) turns validation errors (`{"field": [...]}`
  from serializers), authentication, permission, throttling, parsing and not-found errors into that shape, and two
  errors that are not DRF's: a database that cannot be reached (503 with Retry-After, never a 500 page) and a
  request body over Django's limits (413).
- For API paths, Django's own 404 (a URL that matches no route, such as a job id that is not a UUID), 400 and 500
  answers are the same JSON; the site's pages keep their HTML.
- `ApiSchema` documents the shape in the OpenAPI schema for the errors every operation can give.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.openapi import AutoSchema
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

log = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/")
RETRY_AFTER_SECONDS = {429: 30, 503: 10}
DATABASE_DOWN = "The service's database is unavailable right now. Nothing was changed; try again in a moment."
# Errors that mean "the database cannot be reached", not a bug in a query.
DATABASE_UNREACHABLE = (OperationalError, InterfaceError)


class ErrorSerializer(serializers.Serializer):
    """Every API error."""

    detail = serializers.CharField(help_text="What went wrong, for a person.")
    code = serializers.CharField(help_text="A stable word for programs, e.g. invalid, not_found, "
                                           "storage_unavailable, too_many_active_jobs.")
    field = serializers.CharField(allow_null=True, help_text="The parameter at fault, or null.")


def error_body(detail: str, code: str, field: str | None = None) -> dict[str, Any]:
    return {"detail": detail, "code": code, "field": field}


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def _first_error(detail: Any, field: str | None = None) -> tuple[str, str, str | None]:
    """The first message of a DRF error structure, with its code and the (dotted) field it belongs to."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = None if key in ("non_field_errors", "detail") else str(key)
            inner = f"{field}.{name}" if field and name else (name or field)
            return _first_error(value, inner)
        return "The request is invalid.", "invalid", field
    if isinstance(detail, list):
        for value in detail:
            return _first_error(value, field)
        return "The request is invalid.", "invalid", field
    code = getattr(detail, "code", None) or "invalid"
    return str(detail), str(code), field


def _with_retry_after(response: Response | JsonResponse, status_code: int) -> Response | JsonResponse:
    if status_code in RETRY_AFTER_SECONDS and "Retry-After" not in response:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS[status_code])
    return response


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error as error_body; None (a 500) only for real bugs."""
    if isinstance(exc, DATABASE_UNREACHABLE):
        log.warning("API request failed: database unavailable (%s: %s)", type(exc).__name__, exc)
        return _with_retry_after(Response(error_body(DATABASE_DOWN, "database_unavailable"),
                                          status=status.HTTP_503_SERVICE_UNAVAILABLE), 503)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("The request is too large: fields other than the image may hold at most 1 MiB "
                                   "together (a prompt is far shorter).", "request_too_large"),
                        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return Response(error_body("The request has too many fields or files.", "too_many_fields"),
                        status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail, code, field = _first_error(exc.detail)
    elif isinstance(exc, exceptions.APIException):
        detail, code, field = _first_error(exc.detail)
        if code == "invalid" and not isinstance(exc.detail, list | dict):
            code = exc.default_code
    else:
        detail, code, field = _first_error(response.data)
    response.data = error_body(detail, code, field)
    return _with_retry_after(response, response.status_code)


# -- Django's own error views, for API paths --------------------------------------------------------------------

def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(error_body(f"There is no API resource at {request.path[:200]} (a job id is a UUID).",
                                       "not_found"), status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse(error_body("The request is too large.", "request_too_large"), status=413)
        return JsonResponse(error_body("The request is malformed.", "bad_request"), status=400)
    return defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    exc = sys.exc_info()[1]
    if isinstance(exc, DATABASE_UNREACHABLE):
        # Raised outside a DRF view (a middleware, a page): still a 503 that says to come back, not a 500.
        if is_api_path(request.path):
            return _with_retry_after(JsonResponse(error_body(DATABASE_DOWN, "database_unavailable"), status=503), 503)
        response = HttpResponse(DATABASE_DOWN, status=503, content_type="text/plain; charset=utf-8")
        return _with_retry_after(response, 503)
    if is_api_path(request.path):
        return JsonResponse(error_body("Internal error. The operator has the details in the server log.",
                                       "server_error"), status=500)
    return defaults.server_error(request)


class DatabaseUnavailableMiddleware:
    """A view (page or API) that cannot reach the database answers 503 with Retry-After instead of a 500."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_UNREACHABLE):
            return None
        log.warning("%s failed: database unavailable (%s: %s)", request.path, type(exception).__name__, exception)
        if is_api_path(request.path):
            response: HttpResponse = JsonResponse(error_body(DATABASE_DOWN, "database_unavailable"), status=503)
        else:
            response = HttpResponse(DATABASE_DOWN, status=503, content_type="text/plain; charset=utf-8")
        return _with_retry_after(response, 503)


_STATUS_WORDS = {400: "bad_request", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
                 405: "method_not_allowed", 406: "not_acceptable", 413: "request_too_large",
                 415: "unsupported_media_type", 429: "throttled", 500: "server_error", 503: "unavailable"}


class ApiErrorShapeMiddleware:
    """Outermost: an API answer with an error status that is not JSON yet (Django's HTML 404 page for a URL no
    route matches, a CSRF page, a debug page) gets the error shape; its headers stay."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (response.status_code >= 400 and is_api_path(request.path) and not getattr(response, "streaming", False)
                and not response.get("Content-Type", "").startswith("application/json")):
            word = _STATUS_WORDS.get(response.status_code, "error")
            response.content = JsonResponse(error_body(_message(response.status_code), word)).content
            response["Content-Type"] = "application/json"
        return response


def _message(status_code: int) -> str:
    return {404: "There is no such API resource (a job id is a UUID).",
            405: "This method is not allowed here.",
            500: "Internal error. The operator has the details in the server log."}.get(
        status_code, f"The request failed (HTTP {status_code}).")


_ERROR_DESCRIPTIONS = {
    400: "A parameter is invalid; `field` names it.",
    401: "No valid API token (send `Authorization: Token <key>`).",
    403: "Not allowed.",
    404: "No such resource among yours.",
    405: "Method not allowed.",
    406: "The Accept header asks for a format this API does not give (it answers JSON).",
    413: "The request body is too large.",
    415: "Unsupported content type.",
    429: "Too many requests; see Retry-After.",
    503: "A service the request needs (database, storage or queue) is unavailable; see Retry-After.",
}


class ApiSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the error responses (ErrorSerializer) every operation can give."""

    def _error_codes(self) -> list[int]:
        codes = [400, 404, 405, 406, 503]
        if not all(isinstance(permission, AllowAny) for permission in self.view.get_permissions()):
            codes += [401, 403]
        if self.method in ("POST", "PUT", "PATCH"):
            codes += [413, 415, 429]
        return sorted(codes)

    def _get_response_bodies(self, direction: str = "response") -> dict:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            if str(code) not in responses:
                response = self._get_response_for_code(ErrorSerializer, str(code), direction=direction)
                response["description"] = _ERROR_DESCRIPTIONS[code]
                responses[str(code)] = response
        return responses
