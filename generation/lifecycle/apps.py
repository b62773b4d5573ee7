from django.apps import AppConfig


class LifecycleConfig(AppConfig):
    name = "generation.lifecycle"
    label = "lifecycle"
    verbose_name = "Job deadlines"
    default_auto_field = "django.db.models.BigAutoField"
