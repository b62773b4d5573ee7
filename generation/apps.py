from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Video generation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django.core.signals import request_started

        if not settings.REDIS_URL:
            # Embedded default: the web process runs jobs itself; the first real request starts the worker thread
            # and the reaper (never migrate, shell or the test client: see generation/embedded.py).
            from generation import embedded

            request_started.connect(embedded.start_on_request, dispatch_uid="turbosite-embedded-worker")
