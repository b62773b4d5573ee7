"""files/: stored files behind signed, expiring links (the local-folder storage; see generation.storage)."""

from django.urls import path

from generation import file_views

app_name = "files"

urlpatterns = [
    path("<path:name>", file_views.serve_signed, name="serve"),
]
