"""The embedded default (no REDIS_URL): the web process's first real request starts one worker thread on the
in-process broker, and a job made through the services runs to SUCCEEDED with the real tiny model. The test
client never starts it. Run in a fresh process, because settings are read once per process."""

from __future__ import annotations

from tests.django_process import child_env, manage, run_json

CHILD = """
import io, time
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_started
from django.contrib.auth import get_user_model
from django.test.client import ClientHandler
from PIL import Image
from generation import embedded, services
from generation.models import Job
from turbosite import broker

request_started.send(sender=ClientHandler, environ={})
started_by_test_client = embedded.embedded_worker() is not None
request_started.send(sender=WSGIHandler, environ={})
worker = embedded.embedded_worker()

buffer = io.BytesIO()
Image.new("RGB", (96, 64), (10, 120, 40)).save(buffer, format="PNG")
owner = get_user_model().objects.create_user("erin", "erin@example.com", "long-enough-pass-42")
job = services.create_job(owner, image=SimpleUploadedFile("a.png", buffer.getvalue(), content_type="image/png"),
                          prompt="grass sways", num_frames=5, num_steps=1, model="tiny")
deadline = time.monotonic() + 150
while time.monotonic() < deadline:
    job.refresh_from_db()
    if job.status not in ("QUEUED", "RUNNING"):
        break
    time.sleep(0.2)
print(json.dumps({"broker": broker.describe_broker(), "by_test_client": started_by_test_client,
                  "threads": len(worker.workers) if worker else 0, "status": job.status, "error": job.error,
                  "frames": job.frames, "video": job.output_video.name}))
"""


def test_embedded_web_process_runs_jobs_in_its_own_worker_thread(tmp_path):
    env = child_env(tmp_path)
    migrated = manage(["migrate", "--noinput", "-v", "0"], env)
    assert migrated.returncode == 0, migrated.stderr
    result = run_json(CHILD, env, timeout=240)
    assert result["broker"] == "in-process"
    assert result["by_test_client"] is False
    assert result["threads"] == 1
    assert result["status"] == "SUCCEEDED", result["error"]
    assert result["frames"] == 5 and result["video"].endswith(".mp4")
    assert (tmp_path / "media" / result["video"]).stat().st_size > 0
