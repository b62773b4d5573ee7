"""The submission throttle counts per deployment: with REDIS_URL set its counts live in the shared Redis cache, so
two web processes together accept no more than the rate; with Redis unreachable it lets requests through (the
queue's own check answers 503) instead of failing them with a 500."""

from __future__ import annotations

import os
import uuid

from tests.django_process import child_env, run_json
from tests.outages.processes import free_port

SUBMIT = """
from types import SimpleNamespace
from django.core.cache import caches
from generation.api.throttles import JobCreateThrottle
request = SimpleNamespace(user=SimpleNamespace(is_authenticated=True, pk=4242))
allowed = sum(JobCreateThrottle().allow_request(request, None) for _ in range(3))
print(json.dumps({"allowed": allowed, "backend": type(caches["default"]).__name__}))
"""


def test_two_processes_share_one_submission_budget(tmp_path):
    env = child_env(tmp_path, REDIS_URL=os.environ["REDIS_URL"], QUEUE_NAMESPACE=f"throttle-{uuid.uuid4().hex[:10]}",
                    TURBO_JOB_CREATE_RATE="4/min")
    first = run_json(SUBMIT, env)
    second = run_json(SUBMIT, env)
    assert first == {"allowed": 3, "backend": "TolerantRedisCache"}
    assert second["allowed"] == 1  # 4 per minute for the deployment, not 4 per process


def test_with_redis_unreachable_the_throttle_lets_requests_through(tmp_path):
    env = child_env(tmp_path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", TURBO_JOB_CREATE_RATE="4/min")
    assert run_json(SUBMIT, env, timeout=30)["allowed"] == 3


def test_without_redis_the_cache_is_in_process(tmp_path):
    code = ("from django.core.cache import caches\n"
            "print(json.dumps({'backend': type(caches['default']).__name__}))")
    assert run_json(code, child_env(tmp_path))["backend"] == "LocMemCache"


CLEAR = """
import redis
from django.conf import settings
from django.core.cache import cache
client = redis.Redis.from_url(settings.REDIS_URL)
client.set(OTHER, "queue data of another deployment")
cache.set("mine", 1)
cache.clear()
print(json.dumps({"mine": cache.get("mine"), "other": client.get(OTHER).decode()}))
client.delete(OTHER)
"""


def test_clearing_the_cache_leaves_the_rest_of_redis_alone(tmp_path):
    other = f"other-deployment-{uuid.uuid4().hex[:10]}:gpu"
    env = child_env(tmp_path, REDIS_URL=os.environ["REDIS_URL"], QUEUE_NAMESPACE=f"clear-{uuid.uuid4().hex[:10]}")
    result = run_json(f"OTHER = {other!r}\n" + CLEAR, env)
    assert result == {"mine": None, "other": "queue data of another deployment"}
