"""The job list computes queue positions and ETAs for the whole page at once: its query count does not grow with
the page size, and every value equals what the one-job computation gives."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from generation import services
from generation.models import Job


def _jobs(owner, other, count: int) -> None:
    """`count` jobs of `owner` in mixed states, interleaved with another user's queued jobs (one FIFO queue)."""
    start = timezone.now() - timedelta(hours=1)
    rows = []
    for index in range(count):
        status = [Job.Status.QUEUED, Job.Status.QUEUED, Job.Status.RUNNING, Job.Status.SUCCEEDED][index % 4]
        created = start + timedelta(seconds=10 * index)
        fields = {}
        if status != Job.Status.QUEUED:
            fields = {"started_at": created + timedelta(seconds=2), "worker": f"gpu-{index % 3}", "progress": 0.5}
        if status == Job.Status.SUCCEEDED:
            fields.update(finished_at=created + timedelta(seconds=42), progress=1.0)
        rows.append(Job(owner=owner, prompt=f"p{index}", seed=index, num_frames=5, model="tiny", status=status,
                        created_at=created, **fields))
        rows.append(Job(owner=other, prompt=f"o{index}", seed=index, num_frames=5, model="tiny",
                        status=Job.Status.QUEUED, created_at=created + timedelta(seconds=5)))
    Job.objects.bulk_create(rows)


def _get(client, page_size: int) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/api/v1/jobs/?page_size={page_size}")
    assert response.status_code == 200, response.content
    return len(queries.captured_queries), response.json()


def test_list_query_count_does_not_grow_with_the_page(token_client, user, other_user):
    _jobs(user, other_user, 60)
    client = token_client(user)
    _get(client, 3)  # warms the cached typical run time, which the later pages then share

    small, _ = _get(client, 3)
    large, body = _get(client, 60)
    assert len(body["results"]) == 60
    assert large == small, (small, large)
    assert small <= 8


def test_list_positions_and_etas_match_the_single_job_computation(token_client, user, other_user):
    _jobs(user, other_user, 24)
    _, body = _get(token_client(user), 100)
    queued = [item for item in body["results"] if item["status"] == "QUEUED"]
    assert len(queued) == 12 and all(item["queue_position"] for item in queued)
    for item in body["results"]:
        job = Job.objects.get(id=item["id"])
        assert item["queue_position"] == services.queue_position(job)
        if job.status == Job.Status.RUNNING:  # elapsed time moves between the two computations
            assert abs(item["eta_seconds"] - services.eta_seconds(job)) <= 10
        else:
            assert item["eta_seconds"] == services.eta_seconds(job)
    # The oldest queued job is first in line; the other user's jobs between ours count too.
    positions = sorted(item["queue_position"] for item in queued)
    assert positions[:3] == [1, 3, 7]
