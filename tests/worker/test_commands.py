"""The run_gpu_worker command's refusals (no Redis, a model whose weights cannot load) and its warm-up."""

from __future__ import annotations

from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command

from generation.management.commands.run_gpu_worker import Command
from inference.types import WeightsError


def test_run_gpu_worker_needs_redis(settings):
    settings.REDIS_URL = ""
    with pytest.raises(CommandError, match="REDIS_URL is not set"):
        call_command("run_gpu_worker")


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


def test_worker_warms_a_gpu_pipeline_up_and_says_so():
    out = StringIO()
    command = Command(stdout=out)
    gpu, cpu = _Pipeline("cuda"), _Pipeline("cpu")
    command._warm_up(gpu)
    command._warm_up(cpu)  # nothing to compile or tune on the CPU path
    assert gpu.warmed == [None] and cpu.warmed == []
    assert "warmed up: 480p 1.2 s, 720p 2.5 s" in out.getvalue()
