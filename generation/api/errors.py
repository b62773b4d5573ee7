"""How a service refusal (generation.services.JobRejected) becomes an HTTP answer, the same on every route, in the
API's one error shape (turbosite.api_errors)."""

from __future__ import annotations

from rest_framework.response import Response

from generation.services import JobRejected
from turbosite.api_errors import RETRY_AFTER_SECONDS, error_body


def rejection_body(exc: JobRejected) -> dict[str, str | None]:
    return error_body(exc.message, exc.code, exc.field)


def rejection_response(exc: JobRejected) -> Response:
    response = Response(rejection_body(exc), status=exc.status_code)
    if exc.status_code in RETRY_AFTER_SECONDS:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS[exc.status_code])
    return response


class RejectionMixin:
    """For APIViews: answer JobRejected with its status and message instead of a 500."""

    def handle_exception(self, exc):
        if isinstance(exc, JobRejected):
            return rejection_response(exc)
        return super().handle_exception(exc)
