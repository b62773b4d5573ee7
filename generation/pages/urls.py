"""The web pages: "/" is the new-video form, history/ the gallery, jobs/<id>/ one job and its actions."""

from django.urls import path

from generation.pages import views

urlpatterns = [
    path("", views.new_video, name="new-video"),
    path("history/", views.history, name="history"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<uuid:job_id>/rerun/", views.job_rerun, name="job-rerun"),
    path("jobs/<uuid:job_id>/delete/", views.job_delete, name="job-delete"),
]
