"""Every API error has one JSON shape, {"detail", "code", "field"}, documented in the OpenAPI schema: validation
errors, ids that are not UUIDs, bad filters and pages, bodies over the limit, missing tokens, and a database that
cannot be reached (503 with Retry-After, in a fresh process whose database is down)."""

from __future__ import annotations

import pytest

from tests.django_process import child_env, run_json
from tests.outages.processes import free_port

JOBS = "/api/v1/jobs/"


def _shape(response, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "code", "field"} and body["detail"], body
    if code is not None:
        assert body["code"] == code, body
    assert body["field"] == field, body
    return body


@pytest.fixture
def alice(token_client, user):
    return token_client(user)


@pytest.mark.parametrize("path", [f"{JOBS}not-a-uuid/", f"{JOBS}12345/cancel/", "/api/v1/nothing-here/",
                                  "/v1/turbodiffusion/jobs/not-a-uuid"])
def test_unknown_resources_are_json_404s(alice, path):
    _shape(alice.get(path), 404, "not_found")


@pytest.mark.parametrize(("query", "status", "field"), [
    ({"page": "0"}, 400, "page"), ({"page": "abc"}, 400, "page"), ({"page": "-1"}, 400, "page"),
    ({"page": "999"}, 404, "page"), ({"status": "AAA"}, 400, "status"), ({"status": ""}, 400, "status"),
    ({"status": "queued,"}, 400, "status"), ({"page_size": "0"}, 400, "page_size"),
    ({"page_size": "101"}, 400, "page_size"), ({"page_size": "x"}, 400, "page_size"),
])
def test_bad_list_parameters_name_the_parameter(alice, query, status, field):
    _shape(alice.get(JOBS, query), status, field=field)


def test_validation_errors_name_the_field_with_a_code(alice, image_upload):
    body = _shape(alice.post(JOBS, {"image": image_upload(), "prompt": "x", "num_steps": "9"}, format="multipart"),
                  400, "max_value", "num_steps")
    assert "4" in body["detail"]
    _shape(alice.post(JOBS, {"prompt": "no image"}, format="multipart"), 400, "required", "image")


def test_a_two_megabyte_prompt_is_a_json_413(alice, image_upload):
    response = alice.post(JOBS, {"image": image_upload(), "prompt": "a" * (2 * 1024 * 1024)}, format="multipart")
    _shape(response, 413, "request_too_large")


def test_no_token_is_a_json_401(api_client):
    _shape(api_client.get(JOBS), 401, "not_authenticated")


def test_wrong_method_and_bad_media_type(alice):
    _shape(alice.put(JOBS, {}), 405, "method_not_allowed")
    _shape(alice.post(JOBS, "<x/>", content_type="application/xml"), 415, "unsupported_media_type")


DATABASE_DOWN = """
from django.test import Client
client = Client(raise_request_exception=False)
api = client.get("/api/v1/jobs/", HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
page = client.post("/accounts/login/", {"username": "alice", "password": "not-checked-the-db-is-gone"})
print(json.dumps({"api": [api.status_code, api["Content-Type"], api.get("Retry-After"), api.content.decode()],
                  "page": [page.status_code, page.get("Retry-After")]}))
"""


@pytest.mark.parametrize("debug", ["0", "1"])
def test_database_unreachable_is_a_json_503_with_retry_after(tmp_path, debug):
    env = child_env(tmp_path, DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/gone", DEBUG=debug,
                    SECRET_KEY="x" * 50, ALLOWED_HOSTS="testserver", SECURE_SSL_REDIRECT="0", DB_CONNECT_TIMEOUT="2")
    result = run_json(DATABASE_DOWN, env)
    status, content_type, retry_after, body = result["api"]
    assert status == 503 and content_type == "application/json" and retry_after == "10"
    import json

    assert json.loads(body) | {"detail": ""} == {"detail": "", "code": "database_unavailable", "field": None}
    assert result["page"] == [503, "10"]


# -- the schema says so ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def schema() -> dict:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def test_every_operation_documents_its_errors_in_the_one_shape(schema):
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"detail", "code", "field"}
    assert error["properties"]["field"].get("nullable") is True
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for code in ("400", "404", "405", "503"):
                assert code in responses, (method, path, code)
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", (method, path, code)
            if method in ("post", "put", "patch"):
                assert {"413", "415"} <= set(responses), (method, path)


def test_nullable_fields_are_marked_nullable(schema):
    job = schema["components"]["schemas"]["Job"]["properties"]
    for name in ("queue_position", "eta_seconds", "output_url", "poster_url", "input_url", "started_at",
                 "finished_at", "width", "height", "frames", "fps", "bytes", "retry_of"):
        assert job[name].get("nullable") is True, name


def test_a_number_where_the_schema_says_string_is_refused(alice):
    _shape(alice.post("/api/v1/keys/", {"name": 0, "read_only": False}, format="json"), 400, field="name")
