"""End to end over HTTP: token -> POST /api/v1/jobs/ -> the real worker process runs the tiny model -> poll ->
download the mp4 through output_url and decode it. And a running job canceled over the API ends CANCELED."""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import pytest
import requests
from django.core.files.storage import default_storage
from PIL import Image
from rest_framework.authtoken.models import Token

from generation import storage
from generation.models import Job
from inference.video import probe_video

pytestmark = pytest.mark.django_db(transaction=True)

POLL_TIMEOUT_S = 240


def png(size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def api(live_server, user):
    token = Token.objects.create(user=user)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token.key}"
    session.base = f"{live_server.url}/api/v1"
    yield session
    # A kept-alive socket keeps its server thread, and that thread's database connection, alive.
    session.close()


def submit(api, **fields) -> dict:
    data = {"prompt": "a gradient slowly turns", "model": "tiny", "num_steps": "2", "num_frames": "9", "seed": "31"}
    data.update({key: str(value) for key, value in fields.items()})
    response = api.post(f"{api.base}/jobs/", data=data, files={"image": ("gradient.png", png(), "image/png")},
                        timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def poll(api, job_id: str, until: set[str], seen: list[dict] | None = None, interval: float = 0.2) -> dict:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        body = api.get(f"{api.base}/jobs/{job_id}/", timeout=10).json()
        if seen is not None:
            seen.append(body)
        if body["status"] in until:
            return body
        time.sleep(interval)
    raise AssertionError(f"job {job_id} did not reach {until} in {POLL_TIMEOUT_S} s; last: {body}")


def test_submitted_job_runs_on_the_worker_and_the_mp4_decodes(api, gpu_worker):
    created = submit(api, num_frames=9)
    assert created["status"] == "QUEUED"
    seen: list[dict] = []
    done = poll(api, created["id"], {"SUCCEEDED", "FAILED", "CANCELED"}, seen)
    assert done["status"] == "SUCCEEDED", f"{done}\nworker log:\n{gpu_worker.log()}"

    progresses = [body["progress"] for body in seen]
    assert progresses == sorted(progresses), "progress went backwards"
    assert done["frames"] == 9 and done["fps"] == 16
    assert done["timings"]["denoise"] > 0 and done["timings"]["total"] > 0
    assert done["timings"]["decode_encoder_wait"] >= 0, "the worker did not stream the decode into the mp4 encoder"
    response = requests.get(done["output_url"], timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "video/mp4"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        path.write_bytes(response.content)
        frames, width, height, fps = probe_video(path)
    assert (frames, width, height, fps) == (9, done["width"], done["height"], 16.0)
    assert width * height > 0 and width % 16 == 0 and height % 16 == 0
    poster = requests.get(done["poster_url"], timeout=30)
    assert poster.status_code == 200 and poster.headers["Content-Type"] == "image/jpeg"
    job = Job.objects.get(id=done["id"])
    assert job.worker.count(":") >= 1 and job.attempts == 1 and job.gpu_name == "cpu"


def test_canceling_a_running_job_over_the_api_ends_it_canceled(api, gpu_worker):
    created = submit(api, num_frames=17, num_steps=2)
    running = poll(api, created["id"], {"RUNNING", "SUCCEEDED", "FAILED", "CANCELED"}, interval=0.05)
    assert running["status"] == "RUNNING", running
    response = api.post(f"{api.base}/jobs/{created['id']}/cancel/", timeout=10)
    assert response.status_code == 200, response.text
    final = poll(api, created["id"], {"SUCCEEDED", "FAILED", "CANCELED"})
    assert final["status"] == "CANCELED" and final["output_url"] is None
    job = Job.objects.get(id=created["id"])
    # The worker let go: no heartbeat after it stopped, and nothing was uploaded.
    time.sleep(1.5)
    beat = Job.objects.get(id=job.id).heartbeat_at
    time.sleep(1.5)
    assert Job.objects.get(id=job.id).heartbeat_at == beat
    assert not default_storage.exists(storage.output_name(job))

    # The worker is free again: the next job still runs.
    after = submit(api, num_frames=5, num_steps=1)
    assert poll(api, after["id"], {"SUCCEEDED", "FAILED", "CANCELED"})["status"] == "SUCCEEDED"
