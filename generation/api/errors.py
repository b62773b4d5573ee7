"""How a service refusal (generation.services.JobRejected) becomes an HTTP answer, the same on every route."""

from __future__ import annotations

from rest_framework.response import Response

from generation.services import JobRejected

RETRY_AFTER_SECONDS = {429: 30, 503: 10}


def rejection_body(exc: JobRejected) -> dict[str, str]:
    body = {"detail": exc.message, "code": exc.code}
    if exc.field:
        body["field"] = exc.field
    return body


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
