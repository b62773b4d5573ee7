"""`manage.py run_gpu_worker`: one Dramatiq worker process with one thread on the "gpu" queue, for one GPU.

Run one per GPU, each pinned to its card:

    CUDA_VISIBLE_DEVICES=0 python manage.py run_gpu_worker
    CUDA_VISIBLE_DEVICES=1 python manage.py run_gpu_worker

It needs REDIS_URL (on the embedded default the web process runs jobs itself). The pipeline is loaded before the
first message is taken (--preload, default the site's default model) and stays loaded. The process also runs the
reaper. SIGTERM or Ctrl-C stops it: a running job is put back on the queue for another worker.

With `--gpus-per-job N` (or TURBO_GPUS_PER_JOB) one job runs across N GPUs: this process supervises N rank processes
(generation/group_worker.py), one per GPU of CUDA_VISIBLE_DEVICES, and restarts them if one dies. Several groups on
one host are several commands: CUDA_VISIBLE_DEVICES=0,1 ... --gpus-per-job 2, CUDA_VISIBLE_DEVICES=2,3 ..., etc.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from generation import actors, queue, reaper
from generation import worker as job_worker
from generation.management import serving
from turbosite import broker

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the GPU worker for this process's GPU (pin it with CUDA_VISIBLE_DEVICES=N): one thread, queue 'gpu'."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--preload", default=None,
                            help="model to load before taking jobs (default: TURBO_DEFAULT_MODEL; 'none' to skip)")
        parser.add_argument("--no-warm-up", action="store_true",
                            help="skip the short warm-up job per resolution after preloading on a GPU")
        parser.add_argument("--no-reaper", action="store_true", help="do not run the reaper thread in this process")
        parser.add_argument("--shutdown-timeout", type=int, default=30,
                            help="seconds to wait for the running job to hand itself back on shutdown")
        parser.add_argument("--gpus-per-job", type=int, default=settings.TURBO_GPUS_PER_JOB,
                            help="GPUs that share each job (sequence parallel); default TURBO_GPUS_PER_JOB or 1")

    def handle(self, *args: Any, **options: Any) -> None:
        serving.require_broker("a separate GPU worker needs the Redis broker "
                               "(on the embedded default the web process runs jobs itself)")
        job_worker.remove_stale_temp_folders()  # partial videos of a worker killed on this host
        if options["gpus_per_job"] < 1:
            raise CommandError(f"--gpus-per-job must be at least 1, got {options['gpus_per_job']}")
        preload = options["preload"] or settings.TURBO_DEFAULT_MODEL
        if options["gpus_per_job"] > 1:
            self._run_group(options, preload)
            return
        warm_up: broker.OnWorkerThreadBoot | None = None
        if preload.lower() != "none":
            from inference.types import InferenceInputError, WeightsError

            start = time.perf_counter()
            try:
                pipeline, _ = job_worker.get_pipeline(preload)
            except (WeightsError, InferenceInputError) as exc:
                raise CommandError(f"cannot load model {preload}: {exc} "
                                   "(--preload none starts the worker without loading it)") from None
            device = getattr(pipeline, "device_name", "?")
            self.stdout.write(f"model {preload} loaded on {device} in {time.perf_counter() - start:.1f} s")
            if not options["no_warm_up"]:
                warm_up = job_worker.warm_up_on_boot(pipeline)
        self._warn_if_several_gpus()
        stop = serving.stop_signals()
        presence = job_worker.Presence()  # the site learns from this row which models this host can run
        presence.start()
        dramatiq_worker = reaper_thread = None

        def shut_down() -> None:
            if reaper_thread is not None:
                reaper_thread.stop()
            if dramatiq_worker is not None:
                dramatiq_worker.stop(timeout=options["shutdown_timeout"] * 1000)
            presence.stop()

        try:
            dramatiq_worker = actors.start_worker(threads=1, on_boot=warm_up)
            reaper_thread = None if options["no_reaper"] else reaper.start_reaper_thread()
            seconds = warm_up.wait(stop) if warm_up is not None else None
            if seconds is not None:  # None: no warm-up, or stopped before it ended
                self.stdout.write(job_worker.warmed_up_line(seconds))
        except BaseException:
            shut_down()  # a worker that failed to start must not go on reporting itself alive
            raise

        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "all visible")
        serving.serve_until(stop, self.stdout, f"worker {job_worker.worker_name()} ready: queue {queue.GPU_QUEUE!r} "
                            f"on {broker.describe_broker()}, GPUs {gpus}", shut_down)

    def _run_group(self, options: dict[str, Any], preload: str) -> None:
        from generation import group_worker
        from inference.configs import MODELS

        size = options["gpus_per_job"]
        uneven = [name for name, config in MODELS.items() if config.dit.num_heads % size]
        if preload.lower() != "none" and preload in uneven:
            heads = MODELS[preload].dit.num_heads
            raise CommandError(f"--gpus-per-job {size}: the {heads} attention heads of {preload} do not split "
                               f"evenly over {size} GPUs; choose a divisor of {heads}")
        group = group_worker.GroupOptions(
            size=options["gpus_per_job"], preload=preload, warm_up=not options["no_warm_up"],
            reaper=not options["no_reaper"], shutdown_timeout_s=options["shutdown_timeout"],
            loader=group_worker.rank_loader,
        )
        try:
            group_worker.run_from_command(group, self.stdout)
        except group_worker.GroupCannotStart as exc:
            raise CommandError(str(exc)) from None

    def _warn_if_several_gpus(self) -> None:
        torch = sys.modules.get("torch")
        if torch is None or settings.TURBO_DEVICE or not torch.cuda.is_available():
            return
        count = torch.cuda.device_count()
        if count > 1:
            self.stderr.write(f"warning: this process sees {count} GPUs but uses only the first; run one worker "
                              "per GPU, each pinned with CUDA_VISIBLE_DEVICES=N")
