"""api/v1/: jobs, models, tokens (reverse as "api:job-list", "api:job-detail", "api:job-cancel", ...)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from generation.api import views
from generation.events import views as event_views
from generation.webhooks import api as webhook_api
from turbosite.api_keys import api as key_api

app_name = "api"

router = SimpleRouter()
router.register("jobs", views.JobViewSet, basename="job")

urlpatterns = [
    path("models/", views.ModelListView.as_view(), name="models"),
    path("auth/token/", views.TokenView.as_view(), name="token"),
    path("jobs/<uuid:pk>/events", event_views.JobEventsView.as_view(), name="job-events"),
    path("jobs/<uuid:pk>/webhooks/", webhook_api.JobWebhooksView.as_view(), name="job-webhooks"),
    path("keys/", key_api.ApiKeyListView.as_view(), name="key-list"),
    path("keys/<int:pk>/", key_api.ApiKeyDetailView.as_view(), name="key-detail"),
    path("webhooks/secret/", webhook_api.WebhookSecretView.as_view(), name="webhook-secret"),
    path("webhooks/secret/rotate/", webhook_api.WebhookSecretRotateView.as_view(), name="webhook-secret-rotate"),
    *router.urls,
]
