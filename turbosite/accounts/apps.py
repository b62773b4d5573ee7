from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "turbosite.accounts"
    label = "accounts"
    verbose_name = "Accounts"
