"""Rank 0 of a multi-GPU worker group, when another rank is already gone: whatever collective call breaks first
(telling the ranks to load, to warm up or to generate, or the work itself), the job's owner reads that a GPU process
of the group stopped and the group restarts, the same words the supervisor writes when it sees the rank die first."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from generation import group_worker
from generation.worker import ExplainedFailure, failure_message

REASON = group_worker.group_stopped_reason(2)


class GoneRankControl:
    """The gloo control group after rank 1 died: every collective call fails."""

    def send(self, *command: Any) -> None:
        raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:40123")

    def gather(self, status: str | None) -> list[str | None]:
        raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:40123")


class Pipeline:
    config = SimpleNamespace(fps=16)
    device = "cpu"
    device_name = "cpu"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def generate(self, *args: Any) -> None:
        self.calls.append("generate")

    def warm_up(self, *args: Any) -> None:
        self.calls.append("warm_up")


def leader() -> group_worker._Leader:
    return group_worker._Leader(SimpleNamespace(world=2, rank=0), GoneRankControl(), SimpleNamespace())


def owner_reads(exc: BaseException) -> str:
    run = SimpleNamespace(job=SimpleNamespace(id="job-id", model="tiny", num_frames=5, resolution="480p"),
                          stage=SimpleNamespace(label="Reading your image"))
    return failure_message(exc, run)


@pytest.mark.parametrize("call", ["generate", "warm_up"])
def test_a_gone_rank_breaks_the_command_and_the_owner_reads_why(call):
    lead = leader()
    pipeline = Pipeline()
    group_pipeline = group_worker.GroupPipeline(lead, pipeline)
    with pytest.raises(ExplainedFailure) as raised:
        getattr(group_pipeline, call)(SimpleNamespace())
    assert pipeline.calls == []  # rank 0 did not start work the other ranks never heard of
    assert lead.broken  # the group restarts
    assert owner_reads(raised.value) == f"The video could not be made: {REASON}"
    assert "gloo" in str(raised.value) and "gloo" not in owner_reads(raised.value)  # details for the log only


def test_a_broken_group_refuses_the_next_job_with_the_same_words():
    lead = leader()
    lead.broken = True
    with pytest.raises(ExplainedFailure) as raised:
        group_worker.GroupPipeline(lead, Pipeline()).generate(SimpleNamespace())
    assert owner_reads(raised.value) == f"The video could not be made: {REASON}"


def test_a_gone_rank_while_loading_is_a_group_failure_not_missing_weights():
    lead = leader()
    with pytest.raises(ExplainedFailure) as raised:
        lead.load("tiny")
    assert lead.broken
    assert owner_reads(raised.value) == f"The video could not be made: {REASON}"
