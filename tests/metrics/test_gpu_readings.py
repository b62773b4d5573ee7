"""GPU memory and utilisation per worker: the GPU worker's heartbeat reads them (the reader is injected here: this
host has no GPU), stores them on its registry row, and /metrics exports them as gauges per worker and GPU index,
in Prometheus text that a strict parser accepts. A worker without a GPU exports no GPU sample at all."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from generation import gpu_readings
from generation.models import Worker
from generation.worker import Presence

GIB = 2**30
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
HELP = re.compile(rf"^# HELP ({NAME}) \S.*$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
SAMPLE = re.compile(rf'^({NAME})(?:\{{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\}})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format 0.0.4, strictly: every line a HELP, a TYPE or a sample of a family typed before it,
    values that are numbers, no family typed twice."""
    assert text.endswith("\n")
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP"):
            assert HELP.match(line), line
        elif line.startswith("# TYPE"):
            match = TYPE.match(line)
            assert match and match.group(1) not in types, line
            types[match.group(1)] = match.group(2)
            families[match.group(1)] = []
        else:
            match = SAMPLE.match(line)
            assert match, f"not Prometheus text: {line!r}"
            name, labels, value = match.groups()
            family = next((f for f in (name, re.sub(r"_(bucket|sum|count)$", "", name)) if f in types), None)
            assert family, f"{name} has no TYPE line before it"
            assert re.fullmatch(r"[+-]?(\d+(\.\d*)?([eE][+-]?\d+)?|Inf|NaN)", value), f"not a number: {line!r}"
            families[family].append((dict(LABEL.findall(labels or "")), float(value)))
    return families


def h200(index: int, utilization: int | None) -> dict:
    return {"index": index, "name": "NVIDIA H200", "memory_used_bytes": 61 * GIB + index,
            "memory_total_bytes": 140 * GIB, "memory_reserved_bytes": 58 * GIB, "utilization_percent": utilization}


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_stores_each_reading_on_the_worker_row():
    beats: list[int] = []
    seen_two = threading.Event()

    def reader() -> list[dict]:
        beats.append(len(beats))
        if len(beats) >= 3:
            seen_two.set()
        return [h200(0, 10 * len(beats)), h200(1, None)]

    presence = Presence(name="gpu-host:77:gpu0,1", interval_s=0.05, read_gpus=reader)
    presence.start()
    try:
        assert Worker.objects.get(name="gpu-host:77:gpu0,1").gpus == [h200(0, 10), h200(1, None)]  # at start
        assert seen_two.wait(10)
        time.sleep(0.1)
        row = Worker.objects.get(name="gpu-host:77:gpu0,1")
        assert row.gpus[0]["utilization_percent"] >= 30 and row.gpus[0]["memory_total_bytes"] == 140 * GIB
        assert row.gpus[1]["utilization_percent"] is None
    finally:
        presence.stop()
        connection.close()
    assert not Worker.objects.filter(name="gpu-host:77:gpu0,1").exists()  # retired on stop


@pytest.mark.django_db(transaction=True)
def test_a_reader_that_fails_costs_the_readings_not_the_beat():
    def broken() -> list[dict]:
        raise RuntimeError("NVML: driver not loaded")

    presence = Presence(name="gpu-host:78", interval_s=10, read_gpus=broken)
    presence.start()
    try:
        row = Worker.objects.get(name="gpu-host:78")
        assert row.gpus == [] and row.weights  # alive, with its weights report
    finally:
        presence.stop()


def test_a_host_without_cuda_reads_no_gpu():
    assert gpu_readings.read_gpus() == []  # this host: the CPU build of torch


def fake_torch(*, initialized: bool, nvml: bool) -> SimpleNamespace:
    def utilization(index: int) -> int:
        if not nvml:
            raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")
        return 87

    def device_memory_used(index: int) -> int:
        if not nvml:
            raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")
        return 3 * GIB

    cuda = SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 2, is_initialized=lambda: initialized,
        mem_get_info=lambda index: (40 * GIB, 140 * GIB), memory_reserved=lambda index: 90 * GIB,
        get_device_name=lambda index: "NVIDIA H200", utilization=utilization, device_memory_used=device_memory_used)
    return SimpleNamespace(cuda=cuda)


def test_a_process_with_cuda_up_reads_memory_from_torch_and_utilisation_from_nvml():
    assert gpu_readings._read_one(fake_torch(initialized=True, nvml=True), 1) == {
        "index": 1, "name": "NVIDIA H200", "memory_used_bytes": 100 * GIB, "memory_total_bytes": 140 * GIB,
        "memory_reserved_bytes": 90 * GIB, "utilization_percent": 87}
    # Without NVML only utilisation is unknown.
    assert gpu_readings._read_one(fake_torch(initialized=True, nvml=False), 0)["utilization_percent"] is None


def test_a_process_without_a_cuda_context_reads_only_what_nvml_gives():
    """A multi-GPU group's supervisor: its ranks hold the GPUs; it must not open a context of its own."""
    reading = gpu_readings._read_one(fake_torch(initialized=False, nvml=True), 0)
    assert reading == {"index": 0, "name": None, "memory_used_bytes": 3 * GIB, "memory_total_bytes": None,
                       "memory_reserved_bytes": None, "utilization_percent": 87}
    assert set(gpu_readings._read_one(fake_torch(initialized=False, nvml=False), 0).values()) == {0, None}


@pytest.mark.django_db
def test_metrics_export_each_live_workers_gpus_as_gauges(admin_client):
    Worker.report("gpu-host:10:gpu0,1", {}, gpus=[h200(0, 93), h200(1, None)])
    Worker.report("cpu-host:11", {}, gpus=[])  # the embedded worker of a laptop: no GPU
    Worker.report("gpu-host:12", {}, gpus=[h200(0, 50)])
    Worker.objects.filter(name="gpu-host:12").update(heartbeat_at=timezone.now() - timedelta(hours=1))  # gone

    response = admin_client.get(reverse("metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    families = parse_exposition(response.content.decode())

    used = families["turbosite_worker_gpu_memory_used_bytes"]
    assert sorted((s["worker"], s["gpu_index"], v) for s, v in used) == [
        ("gpu-host:10:gpu0,1", "0", 61 * GIB), ("gpu-host:10:gpu0,1", "1", 61 * GIB + 1)]
    assert sorted(v for _, v in families["turbosite_worker_gpu_memory_total_bytes"]) == [140 * GIB] * 2
    assert sorted(v for _, v in families["turbosite_worker_gpu_memory_reserved_bytes"]) == [58 * GIB] * 2
    # Utilisation unread on GPU 1: no sample, not a zero.
    assert families["turbosite_worker_gpu_utilization_percent"] == [({"worker": "gpu-host:10:gpu0,1",
                                                                      "gpu_index": "0"}, 93.0)]
    for name, _, _ in gpu_readings_metric_names():
        workers = {labels["worker"] for labels, _ in families[name]}
        assert "cpu-host:11" not in workers and "gpu-host:12" not in workers


def test_the_strict_parser_refuses_what_prometheus_would():
    with pytest.raises(AssertionError):
        parse_exposition("turbosite_x 1\n")  # no TYPE
    with pytest.raises(AssertionError):
        parse_exposition('# TYPE turbosite_x gauge\nturbosite_x{worker="a} 1\n')
    with pytest.raises(AssertionError):
        parse_exposition("# TYPE turbosite_x gauge\nturbosite_x None\n")


def gpu_readings_metric_names():
    from generation.metrics import GPU_GAUGES

    return [(name, field, help_text) for field, name, help_text in GPU_GAUGES]
