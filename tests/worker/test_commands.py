"""The run_gpu_worker command's refusals (no Redis, a model whose weights cannot load), its warm-up, and the
registry row through which a worker tells the site which models it can run."""

from __future__ import annotations

import threading
import time
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command

from generation import worker as job_worker
from generation.management import serving
from inference.types import WeightsError


def test_run_gpu_worker_needs_redis(settings):
    settings.REDIS_URL = ""
    with pytest.raises(CommandError, match="REDIS_URL is not set"):
        call_command("run_gpu_worker")


@pytest.mark.parametrize(("command", "instead"), [("run_gpu_worker", "the web process runs jobs itself"),
                                                   ("run_webhook_worker", "the web process delivers webhooks")])
def test_worker_commands_refuse_without_an_answering_broker(settings, monkeypatch, command, instead):
    settings.REDIS_URL = ""
    with pytest.raises(CommandError, match=f"REDIS_URL is not set: .*{instead}"):
        call_command(command)
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    monkeypatch.setattr("turbosite.broker.ping", lambda: False)
    with pytest.raises(CommandError, match="the Redis broker at REDIS_URL does not answer"):
        call_command(command)


def test_serving_says_ready_then_stops_its_threads_after_saying_so():
    stop, out, said_when_stopped = threading.Event(), StringIO(), []
    threading.Timer(0.2, stop.set).start()  # what SIGTERM's handler does
    serving.serve_until(stop, out, "worker w ready", lambda: said_when_stopped.append(out.getvalue()))
    assert said_when_stopped == ["worker w readyshutting down"]


def test_run_gpu_worker_names_the_weights_it_cannot_load(fake_loader):
    fake_loader.error = WeightsError("model wan2.2-i2v-a14b: missing weight files in /models: Wan2.1_VAE.pth")
    with pytest.raises(CommandError, match=r"cannot load model wan2.2-i2v-a14b: .*Wan2.1_VAE.pth.*--preload none"):
        call_command("run_gpu_worker", "--preload", "wan2.2-i2v-a14b")


class _Pipeline:
    def __init__(self, device_type: str) -> None:
        self.device = SimpleNamespace(type=device_type)
        self.warmed: list[object] = []

    def warm_up(self, resolutions=None):
        self.warmed.append(resolutions)
        return {"480p": 1.25, "720p": 2.5}


def test_worker_warms_a_gpu_pipeline_up_in_its_job_thread_and_says_so():
    gpu, cpu = _Pipeline("cuda"), _Pipeline("cpu")
    assert job_worker.warm_up_on_boot(cpu) is None  # nothing to compile or tune on the CPU path
    boot = job_worker.warm_up_on_boot(gpu)
    assert gpu.warmed == []  # not in this thread: in the Dramatiq thread that runs the jobs, as it boots
    boot.after_worker_thread_boot(None, threading.current_thread())
    assert job_worker.warmed_up_line(boot.wait()) == "warmed up: 480p 1.2 s, 720p 2.5 s"
    assert gpu.warmed == [None] and cpu.warmed == []


@pytest.mark.django_db(transaction=True)
def test_a_workers_presence_row_lives_while_it_runs(tmp_path, settings):
    from generation.models import Worker
    from generation.worker import Presence

    settings.TURBO_MODEL_DIR = str(tmp_path)
    presence = Presence("gpu-host:7:gpu0", interval_s=0.05)
    presence.start()
    try:
        row = Worker.objects.get(name="gpu-host:7:gpu0")  # written before the first job is taken
        assert row.weights["tiny"] == {"installed": True, "missing": []}
        assert row.weights["wan2.2-i2v-a14b"]["installed"] is False
        assert "Wan2.1_VAE.pth" in row.weights["wan2.2-i2v-a14b"]["missing"]
        first_beat = row.heartbeat_at
        (tmp_path / "Wan2.1_VAE.pth").write_bytes(b"x")  # installed while the worker runs
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row.refresh_from_db()
            if "Wan2.1_VAE.pth" not in row.weights["wan2.2-i2v-a14b"]["missing"]:
                break
            time.sleep(0.05)
        assert row.heartbeat_at > first_beat
        assert "Wan2.1_VAE.pth" not in row.weights["wan2.2-i2v-a14b"]["missing"]
    finally:
        presence.stop()
    assert not Worker.objects.filter(name="gpu-host:7:gpu0").exists()  # a stopped worker leaves no row behind


def test_gpus_per_job_must_split_the_models_heads():
    with pytest.raises(CommandError, match=r"--gpus-per-job 3: the 40 attention heads of wan2.2-i2v-a14b do not split"):
        call_command("run_gpu_worker", "--preload", "wan2.2-i2v-a14b", "--gpus-per-job", "3")
    with pytest.raises(CommandError, match="--gpus-per-job must be at least 1"):
        call_command("run_gpu_worker", "--gpus-per-job", "0")
