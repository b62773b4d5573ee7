"""`manage.py run_webhook_worker`: a Dramatiq worker process on the "webhooks" and "maintenance" queues (no GPU, no
model).

Webhook deliveries wait on receivers' networks and retention waits on storage deletes, so they run in processes of
their own, never in a GPU worker's thread. `--no-maintenance` leaves the maintenance queue (retention) to others. It needs REDIS_URL (on the embedded default the web process delivers them itself). SIGTERM or Ctrl-C
stops it; a delivery waiting for its retry stays in Redis for the next worker.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from generation.lifecycle import actors as maintenance_actors
from generation.management import serving
from generation.webhooks import actors
from turbosite import broker


class Command(BaseCommand):
    help = "Deliver webhooks and run retention: a worker on the 'webhooks' and 'maintenance' queues."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--threads", type=int, default=4, help="deliveries made at the same time")
        parser.add_argument("--no-maintenance", action="store_true",
                            help="do not consume the 'maintenance' queue (retention runs in another worker)")

    def handle(self, *args: Any, **options: Any) -> None:
        serving.require_broker("on the embedded default the web process delivers webhooks")
        stop = serving.stop_signals()
        dramatiq_worker = actors.start_worker(threads=max(1, options["threads"]))
        # One thread: retention runs one batch at a time anyway (a lock), and must not take the deliveries' threads.
        maintenance = None if options["no_maintenance"] else maintenance_actors.start_worker(threads=1)
        queues = [broker.WEBHOOK_QUEUE] + ([broker.MAINTENANCE_QUEUE] if maintenance else [])

        def shut_down() -> None:
            dramatiq_worker.stop(timeout=15_000)
            if maintenance is not None:
                maintenance.stop(timeout=15_000)

        serving.serve_until(stop, self.stdout, f"webhook worker ready: queue {broker.WEBHOOK_QUEUE!r} on "
                            f"{broker.describe_broker()} (queues {', '.join(queues)})", shut_down)
