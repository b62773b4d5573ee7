"""v1/turbodiffusion/: the replaced system's routes (no trailing slash, as its clients call them)."""

from django.urls import path

from generation.compat import views

app_name = "compat"

urlpatterns = [
    path("wan22-i2v/jobs", views.CompatCreateJobView.as_view(), name="create"),
    path("jobs/<str:job_id>", views.CompatJobView.as_view(), name="job"),
    # The same with a trailing slash, for clients that add one; left out of the schema.
    path("wan22-i2v/jobs/", views.CompatCreateJobView.as_view(schema=None)),
    path("jobs/<str:job_id>/", views.CompatJobView.as_view(schema=None)),
]
