"""Redis down when a job is submitted: a real gunicorn web process on our own redis-server, which we stop."""

from __future__ import annotations

import pytest
import requests
from django.core.files.storage import default_storage
from rest_framework.authtoken.models import Token

from generation.models import Job
from tests.factories import png_bytes
from tests.outages.conftest import queue_length
from tests.outages.processes import child_env, start_web

pytestmark = pytest.mark.django_db(transaction=True)


def submit(base: str, token: str, prompt: str) -> requests.Response:
    return requests.post(f"{base}/api/v1/jobs/", headers={"Authorization": f"Token {token}"},
                         files={"image": ("still.png", png_bytes(), "image/png")},
                         data={"prompt": prompt, "num_frames": "5"}, timeout=30)


def test_redis_down_at_submit_is_a_503_and_leaves_no_queued_row(user, processes, private_redis, tmp_path):
    env = child_env(REDIS_URL=private_redis.url, TURBO_MAX_ACTIVE_JOBS="10")
    web, base = start_web(tmp_path, env)
    processes.append(web)
    token = Token.objects.create(user=user).key

    before = submit(base, token, "while the queue is up")
    assert before.status_code == 201, before.text
    assert queue_length(env) == 1

    private_redis.stop()
    during = submit(base, token, "while the queue is down")
    assert during.status_code == 503, during.text
    assert "queue" in during.json()["detail"].lower()
    assert during.headers.get("Retry-After")
    assert not Job.objects.filter(prompt="while the queue is down").exists()  # no row at all, not even FAILED
    assert Job.objects.filter(status=Job.Status.QUEUED).count() == 1  # only the one that was really queued
    assert len(default_storage.listdir(f"inputs/{user.id}")[1]) == 1  # and no stored input for it

    private_redis.start()  # same port: the web process reconnects by itself
    after = submit(base, token, "when the queue is back")
    assert after.status_code == 201, after.text
    assert queue_length(env) == 1  # a fresh redis-server: only the new message
