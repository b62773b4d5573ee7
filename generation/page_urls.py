"""The web pages: "/" is the new-video form, history/ the gallery, jobs/<id>/ one job and its actions."""

from django.urls import path

from generation import views_pages

urlpatterns = [
    path("", views_pages.new_video, name="new-video"),
    path("history/", views_pages.history, name="history"),
    path("jobs/<uuid:job_id>/", views_pages.job_detail, name="job"),
    path("jobs/<uuid:job_id>/cancel/", views_pages.job_cancel, name="job-cancel"),
    path("jobs/<uuid:job_id>/rerun/", views_pages.job_rerun, name="job-rerun"),
    path("jobs/<uuid:job_id>/delete/", views_pages.job_delete, name="job-delete"),
]
