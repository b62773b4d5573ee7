"""GET /api/v1/jobs/{id}/events: the job as Server-Sent Events (text/event-stream).

Events: `status` (the job now; first event of every stream, and on each state change), `progress` (while it
runs), `completed` (it ended; the last event, with the output links). Each event's data is the job as
GET /api/v1/jobs/{id}/ shows it plus `percent`; its id names that state, so a client reconnecting with
`Last-Event-ID` is not sent a state it already has. A comment line every HEARTBEAT_S keeps proxies from closing an
idle stream; after MAX_STREAM_S the server ends the stream and the browser reconnects (EventSource does so with
Last-Event-ID by itself).

Under ASGI (production: docker/Dockerfile.web) the stream is an async generator on the event loop (redis.asyncio
pub/sub) that borrows a database connection only to read the job; under WSGI (`make run`) a blocking generator that
holds one server thread per open stream.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from generation.api.serializers import ErrorSerializer, JobSerializer
from generation.events import bus
from generation.models import Job

HEARTBEAT_S = 15.0
MAX_STREAM_S = 300.0
RETRY_MS = 2000


class EventStreamRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "event-stream"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        # Only error answers (404, 401) are rendered; the stream itself bypasses renderers.
        return json.dumps(data).encode()


def _snapshot(job_id: Any, request: Request) -> tuple[dict[str, Any], str] | None:
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        return None
    data = dict(JobSerializer(job, context={"request": request}).data)
    data["percent"] = round(job.progress * 100, 1)
    state = json.dumps([data["status"], data["progress"], data["stage"], data["queue_position"]])
    return data, hashlib.sha256(state.encode()).hexdigest()[:16]


def _event(name: str, event_id: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Stream:
    """What to send next, shared by the blocking and the async generator."""

    def __init__(self, job_id: Any, request: Request, last_event_id: str) -> None:
        self.job_id = job_id
        self.request = request
        self.last_id = last_event_id
        self.last_status = ""
        self.done = False

    def next_events(self) -> list[str]:
        """Events for the job's current state (none when unchanged since the last one sent). The event's name
        comes from what changed, not from the message that woke us: a heartbeat's re-read may see a change
        before its message arrives."""
        snapshot = _snapshot(self.job_id, self.request)
        if snapshot is None:  # deleted while watched
            self.done = True
            return []
        data, event_id = snapshot
        if data["status"] in Job.FINISHED:
            self.done = True
            return [_event("completed", event_id, data)]
        if event_id == self.last_id:  # the client has this state (Last-Event-ID), or nothing changed
            self.last_status = data["status"]
            return []
        name = "progress" if data["status"] == self.last_status == Job.Status.RUNNING else "status"
        self.last_id, self.last_status = event_id, data["status"]
        return [_event(name, event_id, data)]


def _blocking(stream: _Stream) -> Iterator[str]:
    subscription = bus.subscribe(stream.job_id)  # before the first read: no change can fall in between
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield from stream.next_events()
        ends = time.monotonic() + MAX_STREAM_S
        while not stream.done and time.monotonic() < ends:
            kind = subscription.get(timeout=HEARTBEAT_S)
            events = stream.next_events()
            yield from events
            if kind is None and not events:
                yield ": heartbeat\n\n"
    finally:
        subscription.close()


async def _async(stream: _Stream) -> AsyncIterator[str]:
    def read() -> list[str]:
        try:
            return stream.next_events()
        finally:
            # A stream lasts minutes and reads the row only now and then: it must not keep a database connection
            # (a pool's, or the server's) all that time.
            connection.close()

    next_events = sync_to_async(read)
    if bus.settings.REDIS_URL:
        subscription = bus.AsyncRedisSubscription(stream.job_id)
        await subscription.start()
        get, close = subscription.get, subscription.close
    else:
        local = bus.LocalSubscription(stream.job_id)
        get = sync_to_async(local.get, thread_sensitive=False)

        async def close() -> None:
            local.close()
    try:
        yield f"retry: {RETRY_MS}\n\n"
        for event in await next_events():
            yield event
        ends = time.monotonic() + MAX_STREAM_S
        while not stream.done and time.monotonic() < ends:
            kind = await get(timeout=HEARTBEAT_S)
            events = await next_events()
            for event in events:
                yield event
            if kind is None and not events:
                yield ": heartbeat\n\n"
    finally:
        await close()


class JobEventsView(APIView):
    renderer_classes = [EventStreamRenderer, JSONRenderer]

    @extend_schema(
        summary="Follow one of your jobs as Server-Sent Events",
        description="A text/event-stream of `status`, `progress` and `completed` events (data: the job as GET "
                    "/jobs/{id}/ shows it, plus `percent`), a comment line every 15 s, and an end after "
                    "`completed`. Reconnect with Last-Event-ID to skip a state you already have.",
        parameters=[OpenApiParameter("Last-Event-ID", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="The id of the last event received (EventSource sends it).")],
        responses={(200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="The event stream."),
                   (404, "application/json"): OpenApiResponse(ErrorSerializer, description="No such job among yours.")},
    )
    def get(self, request: Request, pk: str) -> StreamingHttpResponse:
        job = get_object_or_404(Job, id=pk, owner=request.user)
        stream = _Stream(job.id, request, request.headers.get("Last-Event-ID", "").strip())
        body = _async(stream) if isinstance(request._request, ASGIRequest) else _blocking(stream)
        response = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass events through at once
        return response
