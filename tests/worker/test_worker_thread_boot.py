"""Work run in a Dramatiq worker thread as it boots (turbosite.broker.OnWorkerThreadBoot), as the GPU worker runs its
warm-up: PyTorch keeps cuDNN's tuned plans per thread, so the warm-up must happen in the thread that runs the jobs,
and before it takes the first one. A real Dramatiq worker on an in-process broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from turbosite.broker import OnWorkerThreadBoot


@contextmanager
def running_worker(work: Callable[[], Any], *, threads: int,
                   waiting: int = 0) -> Iterator[tuple[OnWorkerThreadBoot, dramatiq.Actor, list[tuple[str, int]]]]:
    """A worker with `threads` threads on a fresh broker, `waiting` messages queued before it starts; yields the
    boot middleware, the actor and the (event, thread id) log."""
    stub = StubBroker()
    stub.emit_after("process_boot")
    events: list[tuple[str, int]] = []

    @dramatiq.actor(broker=stub, queue_name="jobs", actor_name="record_job")
    def record_job() -> None:
        events.append(("job", threading.get_ident()))

    def logged_work() -> Any:
        result = work()
        events.append(("boot", threading.get_ident()))
        return result

    for _ in range(waiting):
        record_job.send()
    boot = OnWorkerThreadBoot(logged_work)
    stub.add_middleware(boot)
    worker = dramatiq.Worker(stub, worker_threads=threads, worker_timeout=50)
    worker.start()
    try:
        yield boot, record_job, events
        stub.join("jobs", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
        stub.close()


def test_boot_work_runs_in_the_job_thread_before_the_first_job():
    def slow_warm_up() -> dict[str, float]:
        time.sleep(0.3)  # a job already waiting must not start before this ends
        return {"720p": 1.5}

    with running_worker(slow_warm_up, threads=1, waiting=1) as (boot, record_job, events):
        assert boot.wait() == {"720p": 1.5}
        record_job.send()
    assert [name for name, _ in events] == ["boot", "job", "job"]
    assert len({thread for _, thread in events}) == 1  # the jobs run where the warm-up ran
    assert events[0][1] != threading.get_ident()


def test_boot_work_runs_once_whatever_the_thread_count():
    calls: list[int] = []
    with running_worker(lambda: calls.append(1), threads=3) as (boot, record_job, events):
        boot.wait()
        for _ in range(4):
            record_job.send()
    assert calls == [1]
    assert [name for name, _ in events].count("job") == 4


def test_a_failed_boot_work_is_raised_by_wait_and_a_stop_ends_the_wait():
    def broken() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with running_worker(broken, threads=1) as (boot, _, _), pytest.raises(RuntimeError, match="illegal memory"):
        boot.wait()

    never = OnWorkerThreadBoot(lambda: None)  # no worker thread ever boots it
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert never.wait(stop) is None
    assert time.monotonic() - started < 5
