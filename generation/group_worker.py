"""One job across several GPUs: `manage.py run_gpu_worker --gpus-per-job N` runs a supervisor and N rank processes.

- The supervisor (the command's own process) starts one process per GPU of the group (rank r on the r-th visible
  GPU; `TURBO_DEVICE=cpu` runs the ranks on the CPU with gloo, for tests) and watches them. When any rank dies it
  kills the others (a group that lost a member cannot finish a collective), fails the job that rank 0 was running
  with a reason, and starts the group again, with a growing pause if it keeps dying young.
- Rank 0 is an ordinary GPU worker (Dramatiq consumer with one thread, claim, heartbeat, progress, upload: all of
  generation/worker.py) whose pipeline is the group's: loading a model, warming up and each job's request are
  broadcast to the other ranks, then all ranks run `ParallelI2VPipeline` together.
- The other ranks wait for rank 0's next command and follow it.

A failure that may leave the ranks out of step (anything but a rejected request or a cancel, which every rank sees
at the same point) ends the job FAILED through the worker's usual path, then rank 0 exits so the supervisor starts
a fresh group. Several groups on one host are several commands, each with its own GPUs in CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any

log = logging.getLogger(__name__)

# Rank-0 exit code that asks the supervisor for a fresh group (the ranks may be out of step).
EXIT_RESTART = 3
# Rank-0 exit code when the model to preload cannot be loaded: restarting would not help, the supervisor stops.
EXIT_CANNOT_LOAD = 4
# A group that lived shorter than this before dying counts as dying young: the next start waits longer.
_YOUNG_S = 60.0
_MAX_PAUSE_S = 60.0
# Followers wait for rank 0's next command for as long as the worker runs; the control group never times out.
_CONTROL_TIMEOUT = timedelta(days=3650)

RankLoader = Callable[[str, Any], Any]  # (model name, ParallelGroup) -> ParallelI2VPipeline


def load_rank_pipeline(model: str, group: Any) -> Any:
    """The real pipeline of one rank, configured like the single-GPU worker's."""
    from django.conf import settings

    from inference.parallel.pipeline import ParallelI2VPipeline

    return ParallelI2VPipeline.load(
        model,
        settings.TURBO_MODEL_DIR or None,
        group=group,
        attention=settings.TURBO_ATTENTION,
        memory_policy=settings.TURBO_MEMORY_POLICY,
        linears=settings.TURBO_LINEARS,
        kernels=settings.TURBO_KERNELS,
    )


# What the command hands the ranks; tests set a module-level function of their own (it must pickle by name).
rank_loader: RankLoader = load_rank_pipeline


@dataclass(frozen=True)
class GroupOptions:
    size: int
    preload: str  # a model name, or "none"
    warm_up: bool = True
    reaper: bool = True
    shutdown_timeout_s: int = 30
    loader: RankLoader = load_rank_pipeline  # tests hand in a module-level function of their own


class GroupCannotStart(RuntimeError):
    """The group cannot serve at all (its model does not load): restarting it would fail the same way."""


# -- supervisor ------------------------------------------------------------------------------------------------


def supervise(options: GroupOptions, out: IO[str], stop: threading.Event) -> None:
    """Run groups until `stop` is set; a group that loses a rank is replaced by a new one."""
    pause = 1.0
    while not stop.is_set():
        started = time.monotonic()
        ranks = _start_ranks(options)
        out.write(f"group of {options.size} started: rank pids {', '.join(str(p.pid) for p in ranks)}\n")
        out.flush()
        dead = _wait_for_death(ranks, stop)
        if dead is None:
            _shut_down(ranks, options)
            return
        rank, exitcode = dead
        _kill(ranks)
        if rank == 0 and exitcode == EXIT_CANNOT_LOAD:
            raise GroupCannotStart(f"the worker group could not load model {options.preload} (see the messages "
                                   "above; --preload none starts it without loading)")
        what = _describe_exit(rank, exitcode)
        failed = fail_jobs_of(ranks[0].pid, options.size, what)
        from generation.worker import remove_stale_temp_folders

        remove_stale_temp_folders()  # the partial mp4 of a killed rank 0
        log.error("worker group: %s; jobs failed: %s; starting a new group", what, ", ".join(failed) or "none")
        out.write(f"group lost a rank ({what}); jobs failed: {', '.join(failed) or 'none'}; restarting\n")
        out.flush()
        pause = pause * 2 if time.monotonic() - started < _YOUNG_S else 1.0
        pause = min(pause, _MAX_PAUSE_S)
        stop.wait(pause)


def _free_port() -> int:
    """A TCP port free on this host now, for the group's rendezvous (the supervisor itself never imports torch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_ranks(options: GroupOptions) -> list[multiprocessing.process.BaseProcess]:
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    ranks = [
        context.Process(target=rank_main, args=(rank, port, options, os.getpid()), name=f"gpu-rank-{rank}")
        for rank in range(options.size)
    ]
    for process in ranks:
        process.start()
    return ranks


def _wait_for_death(
    ranks: list[multiprocessing.process.BaseProcess], stop: threading.Event
) -> tuple[int, int | None] | None:
    """(rank, exit code) of the first rank to end, or None once `stop` is set."""
    while not stop.wait(0.2):
        for rank, process in enumerate(ranks):
            if not process.is_alive():
                return rank, process.exitcode
    return None


def _describe_exit(rank: int, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"GPU process {rank} was killed by {name}"
    if exitcode == EXIT_RESTART:
        return f"GPU process {rank} stopped after a failed job"
    return f"GPU process {rank} exited with code {exitcode}"


def _kill(ranks: list[multiprocessing.process.BaseProcess]) -> None:
    for process in ranks:
        if process.is_alive():
            process.kill()
    for process in ranks:
        process.join(timeout=10)


def _shut_down(ranks: list[multiprocessing.process.BaseProcess], options: GroupOptions) -> None:
    """Rank 0 first (it hands a running job back to the queue), then the followers it released."""
    leader = ranks[0]
    if leader.is_alive() and leader.pid is not None:
        os.kill(leader.pid, signal.SIGTERM)
    leader.join(timeout=options.shutdown_timeout_s + 15)
    for process in ranks[1:]:
        process.join(timeout=5)
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in ranks[1:]:
        process.join(timeout=5)
    _kill(ranks)


def group_stopped_reason(size: int) -> str:
    """The owner's words for a job that ended because its worker group broke (whoever of rank 0 and the supervisor
    notices first writes it, so both say the same)."""
    return f"one of the {size} GPU processes running this job stopped; the worker group restarts. Retry the job."


def fail_jobs_of(leader_pid: int | None, size: int, what: str) -> list[str]:
    """End FAILED every job still RUNNING under the group's rank 0, and drop any output it stored. Returns their ids."""
    from django.db import close_old_connections
    from django.db.models import Q

    from generation import storage
    from generation.models import Job

    if leader_pid is None:
        return []
    close_old_connections()
    name = f"{socket.gethostname()}:{leader_pid}"
    running = Job.objects.filter(Q(worker=name[:128]) | Q(worker__startswith=f"{name}:"), status=Job.Status.RUNNING)
    failed = []
    for job in running:
        if job.fail(f"The video could not be made: {group_stopped_reason(size)}", detail=what, attempt=job.attempts):
            failed.append(str(job.id))
            for stored in (storage.output_name(job), storage.poster_name(job)):
                storage.delete_quietly(stored)
    return failed


# -- rank processes --------------------------------------------------------------------------------------------


def rank_main(rank: int, port: int, options: GroupOptions, parent_pid: int) -> None:
    """Entry of one rank process (spawned by the supervisor)."""
    _die_with_parent(parent_pid)
    import django

    django.setup()
    import torch.distributed as dist
    from django.conf import settings

    from inference.parallel.group import ParallelGroup, init_process_group

    device = _rank_device(rank, settings.TURBO_DEVICE, options.size)
    init_process_group(rank, options.size, port, device)
    control = dist.new_group(backend="gloo", timeout=_CONTROL_TIMEOUT)
    group = ParallelGroup(device)
    channel = _Control(control)
    if rank > 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every process: rank 0 and the supervisor act
    code = _Leader(group, channel, options).run() if rank == 0 else _follow(group, channel, options)
    logging.shutdown()
    os._exit(code)  # no teardown of a group whose peers may be gone already (it could block)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when the supervisor dies, so no rank outlives it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(1)


def _rank_device(rank: int, configured: str, size: int) -> Any:
    import torch

    if configured == "cpu" or (not configured and not torch.cuda.is_available()):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
        return torch.device("cpu")
    if torch.cuda.device_count() < size:
        raise RuntimeError(f"{size} GPUs per job but {torch.cuda.device_count()} visible: set CUDA_VISIBLE_DEVICES "
                           f"to {size} GPUs for this worker")
    return torch.device("cuda", rank)


class _Control:
    """Rank 0's commands to the other ranks, over a gloo group that never times out."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def send(self, *command: Any) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([command], src=0, group=self.group)

    def receive(self) -> tuple[Any, ...]:
        import torch.distributed as dist

        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return tuple(box[0])

    def gather(self, status: str | None) -> list[str | None]:
        import torch.distributed as dist

        statuses: list[str | None] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(statuses, status, group=self.group)
        return statuses


def _load(options: GroupOptions, model: str, group: Any) -> tuple[Any, str | None]:
    try:
        return options.loader(model, group), None
    except Exception as exc:
        log.exception("rank %d could not load %s", group.rank, model)
        return None, str(exc)


def _follow(group: Any, control: _Control, options: GroupOptions) -> int:
    """Ranks 1..N-1: do what rank 0 says until it says stop. Any failure but a rejected request or a cancel ends
    the process: the supervisor then fails the job and restarts the group."""
    from inference.types import GenerationCanceled, InferenceInputError

    pipeline = None
    while True:
        command = control.receive()
        kind = command[0]
        if kind == "load":
            pipeline = None  # one model per GPU: the old one goes first
            pipeline, error = _load(options, command[1], group)
            control.gather(error and f"GPU process {group.rank}: {error}")
        elif kind == "generate":
            # A rejected request or a cancel: rank 0 sees the same at the same point, the group stays in step.
            with contextlib.suppress(InferenceInputError, GenerationCanceled):
                pipeline.generate(command[1])  # type: ignore[union-attr]
        elif kind == "warm_up":
            pipeline.warm_up(command[1])  # type: ignore[union-attr]
        elif kind == "stop":
            return 0


class _Leader:
    """Rank 0: the single-GPU worker with the group's pipeline plugged in."""

    def __init__(self, group: Any, control: _Control, options: GroupOptions) -> None:
        self.group = group
        self.control = control
        self.options = options
        self.broken = False

    def load(self, model: str) -> GroupPipeline:
        """generation.worker's pipeline loader: every rank loads `model`; raises the first rank's error."""
        from inference.types import WeightsError

        try:
            self.control.send("load", model)
            pipeline, error = _load(self.options, model, self.group)  # a loader's own error comes back, not raised
            errors = [e for e in self.control.gather(error) if e]
        except Exception as exc:  # the group's collective broke: a rank is gone
            self.broken = True
            raise _group_failure(self.group.world, f"loading {model} across the group failed "
                                 f"({type(exc).__name__}: {exc})") from exc
        if error is not None or errors:
            raise WeightsError(error or errors[0])
        return GroupPipeline(self, pipeline)

    def run(self) -> int:
        from django.conf import settings

        from generation import actors, queue
        from generation import worker as job_worker
        from generation.management import serving
        from turbosite import broker

        job_worker.set_pipeline_loader(self.load)
        stop = serving.stop_signals()
        warm_up: broker.OnWorkerThreadBoot | None = None
        if self.options.preload.lower() != "none":
            start = time.perf_counter()
            try:
                pipeline, _ = job_worker.get_pipeline(self.options.preload)
            except Exception as exc:
                print(f"cannot load model {self.options.preload}: {exc}", flush=True)
                return EXIT_CANNOT_LOAD
            print(f"model {self.options.preload} loaded on {pipeline.device_name} in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
            if self.options.warm_up:
                warm_up = job_worker.warm_up_on_boot(pipeline)
        presence = job_worker.Presence()  # the site learns from this row which models this group can run
        presence.start()
        dramatiq_worker = actors.start_worker(threads=1, on_boot=warm_up)
        reaper = None
        if self.options.reaper:
            from generation.reaper import start_reaper_thread

            reaper = start_reaper_thread()
        try:
            seconds = warm_up.wait(stop) if warm_up is not None else None
            if seconds is not None:
                print(job_worker.warmed_up_line(seconds), flush=True)
            print(f"worker {job_worker.worker_name()} ready: queue {queue.GPU_QUEUE!r} on "
                  f"{broker.describe_broker()}, {self.group.world} GPUs per job (device {self.group.device}, "
                  f"model dir {settings.TURBO_MODEL_DIR or 'none'})", flush=True)
            while not stop.wait(0.5) and not self.broken:
                pass
        finally:
            if reaper is not None:
                reaper.stop()
            dramatiq_worker.stop(timeout=self.options.shutdown_timeout_s * 1000)
            presence.stop()
        if self.broken:
            return EXIT_RESTART
        self.control.send("stop")
        return 0


def _group_failure(world: int, detail: str) -> Exception:
    """A job stopped on one rank of a group in a way the other ranks did not see; the group is restarted."""
    from generation.worker import ExplainedFailure

    return ExplainedFailure(group_stopped_reason(world), detail)


class GroupPipeline:
    """What generation.worker holds on rank 0: the rank's pipeline, with every call told to the other ranks first."""

    def __init__(self, leader: _Leader, pipeline: Any) -> None:
        self._leader = leader
        self.pipeline = pipeline
        self.config = pipeline.config
        self.device = pipeline.device
        self.device_name = pipeline.device_name

    def warm_up(self, resolutions: list[str] | None = None) -> dict[str, float]:
        def both() -> dict[str, float]:
            self._leader.control.send("warm_up", resolutions)
            return self.pipeline.warm_up(resolutions)

        return self._guarded(both)

    def generate(self, request: Any, progress: Any = None, should_cancel: Any = None, frame_sink: Any = None) -> Any:
        if self._leader.broken:
            raise _group_failure(self._leader.group.world, "the GPU worker group is restarting")

        def both() -> Any:
            # Telling the other ranks is part of the common work: a rank already gone breaks it right here.
            self._leader.control.send("generate", request)
            return self.pipeline.generate(request, progress, should_cancel, frame_sink)

        return self._guarded(both)

    def _guarded(self, call: Callable[[], Any]) -> Any:
        from inference.types import GenerationCanceled, InferenceInputError

        try:
            return call()
        except (InferenceInputError, GenerationCanceled):
            raise  # every rank raised it at the same point: the group is still in step
        except Exception as exc:
            self._leader.broken = True
            if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
                raise  # the worker words this one itself
            log.exception("the worker group stopped during a job")
            raise _group_failure(self._leader.group.world, f"the job stopped on one of the GPU processes of this "
                                 f"worker ({type(exc).__name__}: {exc}); the worker group restarts") from exc
        except BaseException:
            self._leader.broken = True  # a shutdown or time limit interrupted the ranks' common work
            raise


def run_from_command(options: GroupOptions, out: IO[str]) -> None:
    """The management command's side: signals stop the supervisor, which stops its groups."""
    from generation.management import serving

    stop = serving.stop_signals()
    try:
        supervise(options, out, stop)
    finally:
        out.write("shutting down\n")
        out.flush()
    sys.stdout.flush()
