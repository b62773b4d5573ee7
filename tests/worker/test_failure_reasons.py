"""A job that fails on the worker: its owner reads a short reason and what to try on every page and API; the
exception, its text, the traceback and server paths reach only the log and the admin."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

from generation import worker
from generation.models import Job
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

CRASH = RuntimeError("CUDA error: an illegal memory access was encountered at /srv/turbosite/inference/dit.py:412")
TECHNICAL = ("RuntimeError", "illegal memory access", "/srv/turbosite", "dit.py", "Traceback", "generation/worker.py")


def test_owner_reads_a_reason_operators_read_the_exception(make_job, fake_loader, user, token_client, caplog):
    fake_loader.options = {"fail_at": ("denoise", CRASH)}
    job = make_job()
    with caplog.at_level(logging.ERROR, logger="generation.worker"):
        assert worker.execute_job(str(job.id)) == Job.Status.FAILED
    job.refresh_from_db()
    reason = job.error
    assert reason.startswith("The video could not be made: ") and "Run it again" in reason and str(job.id) in reason
    assert "illegal memory access" in caplog.text  # the log keeps the exception

    api = token_client(user)
    owner_views = {
        "api detail": api.get(f"/api/v1/jobs/{job.id}/"),
        "api list": api.get("/api/v1/jobs/"),
        "compat": api.get(f"/v1/turbodiffusion/jobs/{job.id}"),
    }
    assert owner_views["api detail"].json()["error"] == reason
    assert owner_views["compat"].json()["error"] == reason
    browser = Client()
    browser.force_login(user)
    owner_views["job page"] = browser.get(f"/jobs/{job.id}/")
    owner_views["history page"] = browser.get("/history/")
    assert "The video could not be made: something went wrong on the server" in owner_views["job page"].content.decode()
    for where, response in owner_views.items():
        assert response.status_code == 200, where
        text = response.content.decode()
        for technical in TECHNICAL:
            assert technical not in text, (where, technical)

    operator = make_user("olga", "staff-password-4411", is_staff=True, is_superuser=True)
    admin = Client()
    admin.force_login(operator)
    change = admin.get(f"/admin/generation/job/{job.id}/change/").content.decode()
    assert reason.split(":")[0] in change
    for technical in ("RuntimeError", "illegal memory access", "/srv/turbosite/inference/dit.py", "Traceback"):
        assert technical in change, technical
