"""api/v1/: jobs, models, tokens (reverse as "api:job-list", "api:job-detail", "api:job-cancel", ...)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from generation.api import views

app_name = "api"

router = SimpleRouter()
router.register("jobs", views.JobViewSet, basename="job")

urlpatterns = [
    path("models/", views.ModelListView.as_view(), name="models"),
    path("auth/token/", views.TokenView.as_view(), name="token"),
    *router.urls,
]
