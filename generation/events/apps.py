from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "generation.events"
    label = "job_events"
    verbose_name = "Job events"

    def ready(self) -> None:
        from generation.events import bus
        from generation.signals import job_changed

        job_changed.connect(bus.on_job_changed, dispatch_uid="turbosite-job-events")
