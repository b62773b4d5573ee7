from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "generation.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from generation.signals import job_changed
        from generation.webhooks import services

        job_changed.connect(services.on_job_changed, dispatch_uid="turbosite-webhooks")
