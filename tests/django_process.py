"""Run Django code in a fresh Python process with an environment of the test's choosing.

Settings are read once per process, so "the environment alone switches X" can only be shown in a new process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Everything settings.py reads that the test run itself sets; cleared so each child starts from the defaults.
SERVICE_VARIABLES = (
    "DATABASE_URL", "REDIS_URL", "QUEUE_NAMESPACE", "S3_BUCKET", "S3_ENDPOINT_URL", "S3_PUBLIC_ENDPOINT_URL",
    "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_REGION", "S3_ADDRESSING_STYLE", "SECRET_KEY", "DEBUG",
    "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "DJANGO_ALLOW_ASYNC_UNSAFE",
)


def child_env(data_dir: Path, **variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_VARIABLES}
    env.update({"DJANGO_SETTINGS_MODULE": "turbosite.settings", "TURBO_DATA_DIR": str(data_dir),
                "PYTHONPATH": str(REPO)})
    env.update(variables)
    return env


def run_json(code: str, env: dict[str, str], timeout: float = 60) -> dict:
    """Run `code` after django.setup(); the code must print one JSON object as its last line of output."""
    script = "import django, json\ndjango.setup()\n" + code
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"child exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def manage(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
