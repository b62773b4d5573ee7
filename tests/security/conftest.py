"""Fixtures for the security tests: finished jobs with their files, and a record of every name a link is signed
for."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from generation import storage
from generation.models import Job
from tests.factories import delete_job_files, stored_job


@pytest.fixture
def finished_job(user) -> Iterator[Callable[..., Job]]:
    """A SUCCEEDED job (of `user` unless another owner is given) with an input, an output and a poster in storage."""
    made: list[Job] = []

    def make(owner=None) -> Job:
        job = stored_job(owner or user, Job.Status.SUCCEEDED, prompt="done", seed=1, num_frames=5)
        made.append(job)
        return job

    yield make
    delete_job_files(made)


@pytest.fixture
def signed_names(monkeypatch) -> list[str]:
    """Every file name a link is signed for, in order."""
    names: list[str] = []
    real = storage.signed_url

    def spy(name: str, **kwargs) -> str:
        names.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(storage, "signed_url", spy)
    return names
