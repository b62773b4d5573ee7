"""A hung S3 (SIGSTOP on our own SeaweedFS) behind the production web server (Dockerfile.web's command, DEBUG off,
three processes), with more submits at once than the old threaded server had threads: /healthz keeps answering
promptly, every submit answers 503 storage_unavailable within the web storage budget, nothing is created, and
submits work again once the storage answers."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from rest_framework.authtoken.models import Token

from generation.models import Job
from tests.factories import png_bytes
from tests.outages.processes import child_env, start_web, wait_for
from tests.s3server import HUNG_BUCKET as BUCKET
from tests.s3server import SeaweedS3

pytestmark = pytest.mark.django_db(transaction=True)

WORKERS = 3  # the production compose's WEB_CONCURRENCY
SUBMITS = 14  # more than the 12 threads of the server that this outage once took down
DEADLINE_S = 8  # TURBO_STORAGE_DEADLINE_S, set explicitly below
# A submit may wait out one storage deadline, plus a request's own work on a loaded 2-core machine.
SUBMIT_BOUND_S = DEADLINE_S + 4


def _submit(base: str, token: str, n: int) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(f"{base}/api/v1/jobs/", headers={"Authorization": f"Token {token}"},
                             files={"image": ("still.png", png_bytes(), "image/png")},
                             data={"prompt": f"storage hangs {n}", "num_frames": "5"}, timeout=60)
    return response, time.monotonic() - started


def _probe(base: str) -> tuple[int, float]:
    started = time.monotonic()
    response = requests.get(f"{base}/healthz", timeout=60)
    return response.status_code, time.monotonic() - started


def test_hung_storage_does_not_take_the_web_server_down(user, processes, own_s3: SeaweedS3, tmp_path):
    s3 = own_s3  # frozen by this test itself: the server the web process uses, not this process's storage
    env = child_env(S3_BUCKET=BUCKET, S3_ENDPOINT_URL=s3.endpoint, S3_ACCESS_KEY_ID=s3.access_key,
                    S3_SECRET_ACCESS_KEY=s3.secret_key, S3_ADDRESSING_STYLE="path",
                    TURBO_STORAGE_DEADLINE_S=str(DEADLINE_S), TURBO_MAX_ACTIVE_JOBS="0",
                    TURBO_JOB_CREATE_RATE="1000/min", DEBUG="0", SECRET_KEY=secrets.token_urlsafe(40),
                    ALLOWED_HOSTS="127.0.0.1", SECURE_SSL_REDIRECT="0")
    web, base = start_web(tmp_path, env, production_workers=WORKERS)
    processes.append(web)
    token = Token.objects.create(user=user).key
    assert _probe(base)[0] == 200

    s3.freeze()
    try:
        with ThreadPoolExecutor(SUBMITS) as pool:
            submits = [pool.submit(_submit, base, token, n) for n in range(SUBMITS)]
            probes: list[tuple[int, float]] = []
            while not all(f.done() for f in submits):
                probes.append(_probe(base))
                time.sleep(0.5)
            results = [f.result() for f in submits]
        after = [_probe(base) for _ in range(5)]
    finally:
        s3.thaw()

    for response, elapsed in results:
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "storage_unavailable" and response.headers["Retry-After"]
        assert elapsed < SUBMIT_BOUND_S, elapsed
    # Requests waiting on storage hold no thread the probe needs: it answers at once all along.
    assert probes and all(status == 200 and seconds < 2 for status, seconds in probes), probes
    assert all(status == 200 and seconds < 1 for status, seconds in after), after
    assert not Job.objects.exists()

    # Each server process fails fast for a few seconds after its last storage timeout, then tries storage again.
    wait_for(lambda: _submit(base, token, SUBMITS)[0].status_code == 201, 30, "a submit to work after the thaw")
    job = Job.objects.get()
    assert job.input_image.name in s3.keys(BUCKET, "inputs/")
