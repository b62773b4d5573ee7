"""The run_gpu_worker command's refusals: no Redis, and a model whose weights cannot load."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from inference.types import WeightsError


def test_run_gpu_worker_needs_redis(settings):
    settings.REDIS_URL = ""
    with pytest.raises(CommandError, match="REDIS_URL is not set"):
        call_command("run_gpu_worker")


def test_run_gpu_worker_names_the_weights_it_cannot_load(fake_loader):
    fake_loader.error = WeightsError("model wan2.2-i2v-a14b: missing weight files in /models: Wan2.1_VAE.pth")
    with pytest.raises(CommandError, match=r"cannot load model wan2.2-i2v-a14b: .*Wan2.1_VAE.pth.*--preload none"):
        call_command("run_gpu_worker", "--preload", "wan2.2-i2v-a14b")
