"""What the job page states about a finished video matches the video."""

from __future__ import annotations

import re

import pytest

from generation.models import Job
from tests.factories import stored_job

pytestmark = pytest.mark.django_db


def test_job_page_says_the_real_size_of_the_video(browser_client, user):
    """A tiny-model job asked for 480p makes a 112x144 video: the page says 112x144, not "480p" alone."""
    job = stored_job(user, Job.Status.SUCCEEDED, resolution="480p", adaptive_resolution=True)
    Job.objects.filter(id=job.id).update(width=112, height=144)
    html = browser_client.get(f"/jobs/{job.id}/").content.decode()
    size = re.search(r'data-testid="size">([^<]*)<', html)
    assert size is not None and size.group(1) == "112\u00d7144 pixels"
    asked = re.search(r'data-testid="resolution">([^<]*)<', html).group(1)
    assert asked.startswith("480p") and "keeping the aspect ratio" in asked


def test_job_page_of_a_job_still_running_names_the_asked_resolution(browser_client, user):
    job = stored_job(user, Job.Status.RUNNING, resolution="720p", adaptive_resolution=False)
    html = browser_client.get(f"/jobs/{job.id}/").content.decode()
    assert re.search(r'data-testid="resolution">([^<]*)<', html).group(1) == "720p"
    assert 'data-testid="size"' not in html
