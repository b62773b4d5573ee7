"""Account URLs under /accounts/. The names are Django's usual ones (login, logout, password_reset, ...),
so `LOGIN_URL = "login"` and the auth views' own redirects work unchanged."""

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from generation.lifecycle import pages as erase_pages
from generation.webhooks import pages as webhook_pages
from turbosite.accounts import views
from turbosite.api_keys import pages as key_pages

urlpatterns = [
    path("", views.account, name="account"),
    path("token/regenerate/", views.regenerate_token, name="token-regenerate"),
    path("videos/delete/", erase_pages.delete_all_videos, name="delete-all-videos"),
    path("delete/", erase_pages.delete_account, name="delete-account"),
    path("keys/new/", key_pages.create, name="api-key-create"),
    path("keys/<int:pk>/revoke/", key_pages.revoke, name="api-key-revoke"),
    path("webhook-secret/rotate/", webhook_pages.rotate_secret, name="webhook-secret-rotate"),
    path("signup/", views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/change/", auth_views.PasswordChangeView.as_view(success_url=reverse_lazy("password_change_done")),
         name="password_change"),
    path("password/change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("password/reset/", auth_views.PasswordResetView.as_view(
        email_template_name="registration/password_reset_email.txt",
        subject_template_name="registration/password_reset_subject.txt",
    ), name="password_reset"),
    path("password/reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("password/reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(),
         name="password_reset_confirm"),
    path("password/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
]
