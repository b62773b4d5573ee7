from django.apps import AppConfig


class ApiKeysConfig(AppConfig):
    name = "turbosite.api_keys"
    label = "api_keys"
    verbose_name = "API keys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from turbosite.api_keys import authentication  # noqa: F401  (registers the OpenAPI security scheme)
