"""Entry point of a real GPU-worker process for the outage tests: `manage.py run_gpu_worker` with the fake
pipeline of tests/outages/fake_pipeline.py. Run as `python -m tests.outages.worker_main [run_gpu_worker args]`
with the environment the test chose (database, Redis namespace, S3 endpoint, timings)."""

from __future__ import annotations

import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "turbosite.settings")
    django.setup()
    from django.core.management import call_command

    from generation import worker
    from tests.outages.fake_pipeline import FakePipeline

    worker.set_pipeline_loader(FakePipeline)
    call_command("run_gpu_worker", "--preload", "none", *sys.argv[1:])


if __name__ == "__main__":
    main()
