"""GET /api/v1/jobs/{id}/events: Server-Sent Events fed by the real Redis pub/sub (and the in-process bus of the
embedded default), under WSGI (blocking generator) and ASGI (async generator), with Last-Event-ID resume and
heartbeats; and the job page following a job without a request per tick, in Chromium."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import AsyncClient
from django.urls import reverse

from generation import storage
from generation.events import views as event_views
from generation.models import Job
from tests.browser import log_in
from tests.factories import delete_job_files, stored_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def quick_heartbeat(monkeypatch):
    monkeypatch.setattr(event_views, "HEARTBEAT_S", 0.3)


@pytest.fixture
def running(user) -> Iterator[Job]:
    job = stored_job(user, Job.Status.RUNNING)
    yield job
    delete_job_files([job])


def parse(chunks: Iterator[str]) -> Iterator[dict]:
    """Split a text/event-stream into events ({"comment": ...} for comment lines)."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            event: dict = {}
            for line in block.splitlines():
                if line.startswith(":"):
                    event["comment"] = line[1:].strip()
                else:
                    name, _, value = line.partition(": ")
                    event[name] = value
            if "data" in event:
                event["data"] = json.loads(event["data"])
            yield event


def later(*steps) -> threading.Thread:
    """Run each (delay, action) in a thread: the stand-in worker."""

    def run() -> None:
        try:
            for delay, action in steps:
                time.sleep(delay)
                action()
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def finish_steps(job: Job):
    def progress() -> None:
        assert Job.objects.get(id=job.id).report_progress(progress=0.5, stage="denoise")

    def succeed() -> None:
        assert Job.objects.get(id=job.id).succeed(output_video=storage.output_name(job), poster=storage.poster_name(job))

    return (0.5, progress), (1.0, succeed)  # room for the stream to send the progress before the end


def events_of(response) -> list[dict]:
    return [e for e in parse(response.streaming_content) if "event" in e]


def test_a_stream_sends_status_progress_and_completed(user, token_client, running):
    client = token_client(user)
    response = client.get(reverse("api:job-events", args=[running.id]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    worker = later(*finish_steps(running))
    events = events_of(response)  # ends by itself after completed
    worker.join()
    assert [e["event"] for e in events] == ["status", "progress", "completed"]
    status, progress, completed = (e["data"] for e in events)
    assert status["status"] == "RUNNING"
    assert progress["percent"] == 50.0 and progress["stage"] == "denoise" and "eta_seconds" in progress
    assert completed["status"] == "SUCCEEDED" and completed["output_url"].startswith("http")
    assert len({e["id"] for e in events}) == 3


def test_heartbeats_and_last_event_id_resume(user, token_client, running):
    client = token_client(user)
    first = next(e for e in parse(client.get(reverse("api:job-events", args=[running.id])).streaming_content)
                 if "event" in e)
    assert first["event"] == "status"
    resumed = client.get(reverse("api:job-events", args=[running.id]), headers={"Last-Event-ID": first["id"]})
    stream = parse(resumed.streaming_content)
    assert next(stream) == {"retry": "2000"}
    assert next(stream) == {"comment": "heartbeat"}  # nothing new: no repeated status
    worker = later(*finish_steps(running))
    rest = [e["event"] for e in stream if "event" in e]
    worker.join()
    assert rest == ["progress", "completed"]


def test_a_finished_job_sends_completed_and_ends(user, token_client):
    job = stored_job(user, Job.Status.FAILED)
    events = events_of(token_client(user).get(reverse("api:job-events", args=[job.id])))
    assert [e["event"] for e in events] == ["completed"]
    assert events[0]["data"]["error"]
    delete_job_files([job])


def test_another_users_job_is_a_404_and_anonymous_a_401(user, other_user, token_client, api_client, running):
    assert token_client(other_user).get(reverse("api:job-events", args=[running.id])).status_code == 404
    assert api_client.get(reverse("api:job-events", args=[running.id])).status_code == 401


def test_the_embedded_default_uses_the_in_process_bus(user, token_client, running, settings):
    settings.REDIS_URL = ""
    response = token_client(user).get(reverse("api:job-events", args=[running.id]))
    worker = later(*finish_steps(running))
    events = events_of(response)
    worker.join()
    assert [e["event"] for e in events] == ["status", "progress", "completed"]


def test_under_asgi_the_stream_is_async(user, token_client, running):
    token = token_client(user).token

    async def read() -> list[dict]:
        response = await AsyncClient().get(reverse("api:job-events", args=[running.id]),
                                           headers={"Authorization": f"Token {token}"})
        assert response.is_async
        chunks = []
        async for chunk in response.streaming_content:
            chunks.append(chunk)
        return [e for e in parse(iter(chunks)) if "event" in e]

    worker = later(*finish_steps(running))
    events = async_to_sync(read)()
    worker.join()
    assert [e["event"] for e in events] == ["status", "progress", "completed"]


def test_openapi_documents_the_stream(api_client):
    schema = api_client.get(reverse("schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = schema["paths"]["/api/v1/jobs/{id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]


def test_the_job_page_gets_progress_without_polling(live_server, page, user, running, console_errors):
    api_path = reverse("api:job-detail", args=[running.id])
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if request.url.endswith(api_path) else None)
    log_in(page, live_server.url, user.username, user.plain_password,
           next_path=reverse("job", kwargs={"job_id": running.id}))
    progress = page.locator("[data-testid=progress]")

    def shown() -> float:
        return float(progress.get_attribute("value") or 0)  # <progress>.value reflects to the attribute

    for value in (0.3, 0.6, 0.9):
        assert Job.objects.get(id=running.id).report_progress(progress=value, stage="denoise")
        deadline = time.monotonic() + 10
        while shown() < value - 0.001 and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert shown() == pytest.approx(value, abs=0.001)
    assert page.inner_text("[data-field=percent]") == "90%"
    assert polls == []  # every tick came over the one event stream
    assert Job.objects.get(id=running.id).cancel()
    page.wait_for_selector("[data-testid=job-canceled]", timeout=10_000)  # the page reloaded when it ended
    assert console_errors == []
