"""`manage.py ensure_demo_user`: create the demo account, or reset it if it exists, and print how to log in.

`make run` calls it so a person on a fresh machine can log in at once. The password is new on every run unless
one is given (option or TURBO_DEMO_PASSWORD), so a forgotten or guessed demo password never lingers.
"""

from __future__ import annotations

import os
import secrets

from axes.utils import reset as reset_lockouts
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create or reset the demo user and print its username, password and API token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--email", default="demo@example.com")
        parser.add_argument("--password", default=None,
                            help="default: TURBO_DEMO_PASSWORD, else a fresh random password each run")

    def handle(self, *args, username: str, email: str, password: str | None, **options) -> None:
        password = password or os.environ.get("TURBO_DEMO_PASSWORD") or secrets.token_urlsafe(12)
        User = get_user_model()
        with transaction.atomic():
            user, created = User.objects.get_or_create(username=username, defaults={"email": email})
            try:
                validate_password(password, user)
            except ValidationError as exc:
                raise CommandError(f"demo password rejected: {' '.join(exc.messages)}") from None
            user.email = user.email or email
            user.is_active = True
            user.set_password(password)
            user.save()
            token, _ = Token.objects.get_or_create(user=user)
        # A reset also lifts any login lockout left by earlier failed attempts.
        reset_lockouts(username=username)
        self.stdout.write(f"Demo user {'created' if created else 'reset'}.")
        self.stdout.write(f"  username: {username}")
        self.stdout.write(f"  password: {password}")
        self.stdout.write(f"  API token: {token.key}")
