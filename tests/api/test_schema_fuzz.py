"""schemathesis against /api/schema/: every operation, a bounded number of generated requests each, with a valid
token; whatever the input, the answer is never a 5xx, and with every check schemathesis has (`--checks all`) the
answers match the schema: documented status codes, content types, headers and bodies (errors included), schema-valid
schema-invalid input rejected (schema-valid input is not always accepted: see the test). (The `make test` budget: about 10 examples per operation.)"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token

from generation.models import Job

EXAMPLES_PER_OPERATION = 12


@pytest.fixture(autouse=True)
def keep_the_test_connection(db):
    """The real WSGI handler closes the database connection after each request; inside the test's transaction
    that would cut it, so (like Django's test client) it stays open while the fuzzer runs."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def auth_header(user, settings, monkeypatch) -> dict[str, str]:
    from generation.api.throttles import JobCreateThrottle

    settings.TURBO_MAX_ACTIVE_JOBS = 3
    # Past the submission throttle, so the fuzzer's requests reach validation instead of stopping at 429.
    monkeypatch.setattr(JobCreateThrottle, "THROTTLE_RATES",
                        {**JobCreateThrottle.THROTTLE_RATES, "job_create": "100000/min"})
    # Some real rows, so detail/cancel/retry/delete paths meet existing ids as well as random ones.
    Job.objects.create(owner=user, prompt="fuzz target", seed=1, num_frames=5, model="tiny")
    return {"Authorization": f"Token {Token.objects.create(user=user).key}"}


def _load_schema():
    from django.core.wsgi import get_wsgi_application

    # Loaded at collection (schemathesis's fixture loader does not work with this pytest); the schema view needs
    # no database.
    return schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


schema = _load_schema()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_api_fail_with_a_server_error(case, auth_header, enqueued):
    response = case.call_and_validate(headers=auth_header, checks=[schemathesis.checks.not_a_server_error])
    assert response.status_code < 500


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_answer_conforms_to_the_schema(case, auth_header, enqueued):
    # Every check but one. positive_data_acceptance wants every schema-valid request accepted, and a schema cannot
    # state "a decodable image", "4k+1 frames" or "the right password": those are refused with documented 400s.
    case.call_and_validate(headers=auth_header, excluded_checks=[schemathesis.checks.positive_data_acceptance])
