"""`manage.py reap_jobs`: requeue or fail RUNNING jobs whose worker stopped sending heartbeats (once, or --loop)."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from generation.reaper import reap_stale_jobs, resend_lost_messages


class Command(BaseCommand):
    help = ("Requeue RUNNING jobs whose heartbeat is stale, or fail them after TURBO_MAX_ATTEMPTS attempts; send again "
            "QUEUED jobs whose message was lost.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--stale-after", type=float, default=None,
                            help=f"seconds of silence (default TURBO_HEARTBEAT_STALE_S={settings.TURBO_HEARTBEAT_STALE_S})")
        parser.add_argument("--max-attempts", type=int, default=None,
                            help=f"attempts before FAILED (default TURBO_MAX_ATTEMPTS={settings.TURBO_MAX_ATTEMPTS})")
        parser.add_argument("--loop", action="store_true", help="keep running every TURBO_REAPER_INTERVAL_S")

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            result = reap_stale_jobs(stale_after_s=options["stale_after"], max_attempts=options["max_attempts"])
            self.stdout.write(f"requeued {len(result.requeued)}, failed {len(result.failed)}")
            for job_id in result.requeued:
                self.stdout.write(f"  requeued {job_id}")
            for job_id in result.failed:
                self.stdout.write(f"  failed {job_id}")
            for job_id in resend_lost_messages():
                self.stdout.write(f"  sent again (its message was lost) {job_id}")
            if not options["loop"]:
                return
            time.sleep(settings.TURBO_REAPER_INTERVAL_S)
