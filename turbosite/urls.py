"""Root URLs. Each area keeps its own urls module; this file only mounts them."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from generation import metrics
from turbosite import health


def favicon(request: HttpRequest) -> HttpResponse:
    # Resolved per request: with the manifest storage, static() needs collectstatic's manifest.
    return redirect(static("img/favicon.ico"), permanent=True)


urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin, JSON answers); the file is in static/.
    path("favicon.ico", favicon),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("turbosite.accounts.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("generation.api.urls")),
    path("v1/turbodiffusion/", include("generation.compat.urls")),
    path("files/", include("generation.file_urls")),
    path("", include("generation.pages.urls")),
]

# API paths answer errors as JSON (turbosite/api_errors.py); pages keep Django's HTML.
handler400 = "turbosite.api_errors.bad_request"
handler404 = "turbosite.api_errors.page_not_found"
handler500 = "turbosite.api_errors.server_error"
