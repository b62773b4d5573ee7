"""A storage server that accepts connections but answers nothing (SIGSTOP on our own SeaweedFS): a submit answers
503 storage_unavailable within the web budget and creates nothing, the next submit fails at once instead of
tying up another server thread, and the input whose row was never committed is deleted once storage answers."""

from __future__ import annotations

import time

from generation import storage
from generation.models import Job, PendingDelete
from tests.outages.processes import wait_for
from tests.s3server import HUNG_BUCKET as BUCKET


def _submit(client, image_upload):
    started = time.monotonic()
    response = client.post("/api/v1/jobs/", {"image": image_upload(), "prompt": "storage hangs", "model": "tiny",
                                             "num_frames": 5}, format="multipart")
    return response, time.monotonic() - started


def test_submit_while_storage_hangs_answers_503_in_time_and_leaves_nothing(hung_s3, token_client, user,
                                                                          image_upload, enqueued):
    client = token_client(user)
    hung_s3.freeze()

    response, elapsed = _submit(client, image_upload)
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "storage_unavailable" and response["Retry-After"]
    assert elapsed < 10, elapsed
    # Storage just proved slow: the next request does not wait for it again.
    again, quick = _submit(client, image_upload)
    assert again.status_code == 503 and again.json()["code"] == "storage_unavailable"
    assert quick < 2, quick

    assert not Job.objects.exists() and enqueued == []
    pending = list(PendingDelete.objects.values_list("name", flat=True))
    assert len(pending) == 1 and pending[0].startswith(f"inputs/{user.pk}/")

    hung_s3.thaw()
    # The PUT the server had received before it stalled lands now: a file without a job row, unless swept.
    assert wait_for(lambda: hung_s3.keys(BUCKET, "inputs/") == pending, 10, "the stalled write to land")
    for _ in range(2):
        storage.sweep_pending_deletes(settle_s=0)
    assert hung_s3.keys(BUCKET, "inputs/") == []
    assert not PendingDelete.objects.exists()


def test_storage_back_submits_work_again(hung_s3, token_client, user, image_upload):
    response, _ = _submit(token_client(user), image_upload)
    assert response.status_code == 201, response.content
    assert hung_s3.keys(BUCKET, "inputs/") == [storage.input_name(Job.objects.get())]
    storage.delete_quietly(storage.input_name(Job.objects.get()))
