"""The Worker admin shows what each worker's last heartbeat read of its GPUs (the same Worker.gpus that /metrics
exports), readably, to a staff user allowed to view workers; a worker without a GPU says so, and a value the
worker could not read is a dash, never a zero."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from generation.models import Worker
from tests.factories import make_user

pytestmark = pytest.mark.django_db

GIB = 2**30
CHANGELIST = "/admin/generation/worker/"
WEIGHTS = {"wan2.2-t2v-a14b": {"installed": True, "missing": []},
           "wan2.2-i2v-a14b": {"installed": False, "missing": ["wan2.2-i2v-a14b/vae.safetensors"]}}


@pytest.fixture
def staff_client(client):
    """A staff user who is not a superuser, with only the permission to view workers, as an operator would be."""
    operator = make_user("olga", "quiet-copper-5120", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="view_worker", content_type__app_label="generation"))
    client.force_login(operator)
    return client


@pytest.fixture
def workers():
    gpu_host = Worker.report("gpu-a:41:gpu0,1", WEIGHTS, gpus=[
        {"index": 0, "name": "NVIDIA H200", "memory_used_bytes": int(41.2 * GIB), "memory_total_bytes": int(139.8 * GIB),
         "memory_reserved_bytes": int(38.5 * GIB), "utilization_percent": 87},
        # a group supervisor's reading: NVML's used memory, no total, no allocator of its own
        {"index": 1, "name": None, "memory_used_bytes": int(12.0 * GIB), "memory_total_bytes": None,
         "memory_reserved_bytes": None, "utilization_percent": None},
    ])
    cpu_host = Worker.report("cpu-b:7", {}, gpus=[])
    Worker.objects.filter(pk=cpu_host.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    return {"gpu": gpu_host, "cpu": Worker.objects.get(pk=cpu_host.pk)}


def test_changelist_shows_each_gpu_on_one_line(staff_client, workers):
    response = staff_client.get(CHANGELIST)
    assert response.status_code == 200
    page = response.content.decode()
    assert "GPU 0: 41.2/139.8 GiB, 87%" in page
    assert "GPU 1: 12.0 GiB used, —" in page
    assert "no GPU" in page  # the worker whose host has no CUDA
    assert "wan2.2-t2v-a14b" in page and "wan2.2-i2v-a14b" not in page  # installed models only
    assert 'alt="True"' in page and 'alt="False"' in page  # one live, one silent for an hour


def test_change_page_shows_a_table_of_the_readings(staff_client, workers):
    page = staff_client.get(f"{CHANGELIST}{workers['gpu'].pk}/change/").content.decode()
    assert "<td>0</td><td>NVIDIA H200</td><td>41.2 GiB</td><td>139.8 GiB</td><td>38.5 GiB</td><td>87%</td>" in page
    assert "<td>1</td><td>—</td><td>12.0 GiB</td><td>—</td><td>—</td><td>—</td>" in page
    assert "missing: wan2.2-i2v-a14b/vae.safetensors" in page
    assert 'name="name"' not in page and 'name="gpus"' not in page  # nothing is editable

    page = staff_client.get(f"{CHANGELIST}{workers['cpu'].pk}/change/").content.decode()
    assert "no GPU (last heartbeat 1" in page and "GiB" not in page


def test_readings_the_page_cannot_label_are_skipped(staff_client):
    odd = Worker.report("odd:1", {}, gpus=[{"name": "no index"}, "not a dict", {"index": 2, "memory_used_bytes": True}])
    page = staff_client.get(CHANGELIST).content.decode()
    assert "GPU 2: memory —, —" in page and "no index" not in page
    assert staff_client.get(f"{CHANGELIST}{odd.pk}/change/").status_code == 200


def test_workers_are_for_staff_only(client, user, workers):
    client.force_login(user)
    assert client.get(CHANGELIST).status_code == 302  # to the admin login
    assert client.get(f"{CHANGELIST}add/").status_code == 302
