"""docker/: the compose file parses and hangs together, and the images install the project the way CI does."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
IMAGES = {"web": DOCKER / "Dockerfile.web", "worker": DOCKER / "Dockerfile.worker"}
WEB_ONLY = {"WEB_CONCURRENCY", "DB_POOL_MAX_SIZE"}  # the server's processes and each one's database pool
VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value
    return pairs


def settings_variables() -> set[str]:
    """Every environment variable turbosite/settings.py reads (env_str/env_int/env_bool/env_list)."""
    return set(re.findall(r"env_(?:str|int|bool|list)\(\s*\"(\w+)\"", (ROOT / "turbosite/settings.py").read_text()))


def test_compose_has_every_service_with_the_right_dependencies(compose):
    services = compose["services"]
    assert {"postgres", "redis", "minio", "createbucket", "migrate", "web", "worker"} <= set(services)
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["createbucket"]["condition"] == "service_completed_successfully"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "minio"):
        assert services[name]["healthcheck"]["test"], f"{name} needs a healthcheck for depends_on to wait on"


def test_bucket_is_created_once_at_start_and_stays_private(compose):
    job = compose["services"]["createbucket"]
    assert job["restart"] == "no"
    assert job["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(job["command"])
    assert "mc mb --ignore-existing" in script and "mc anonymous set none" in script
    assert "$$S3_BUCKET" in script  # escaped: expanded by the container's shell, not by compose


def test_worker_reserves_a_gpu_and_has_time_to_hand_back_its_job(compose):
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device.get("count") or device.get("device_ids")
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.worker"
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace >= 60
    assert any(v.endswith(":/models:ro") for v in worker["volumes"])
    # The weights belong to the GPU workers, which report what is installed; the web never reads them.
    assert not any(":/models" in v for v in compose["services"]["web"].get("volumes", []))


def test_worker_keeps_its_compiled_kernels_when_the_container_is_replaced(compose):
    env = re.search(r"TRITON_CACHE_DIR=(\S+)", IMAGES["worker"].read_text())
    assert env is not None
    mounts = [v for v in compose["services"]["worker"]["volumes"] if v.endswith(f":{env.group(1)}")]
    assert len(mounts) == 1
    volume = mounts[0].split(":")[0]
    assert volume in compose["volumes"]  # a named volume, not the container's own layer


def test_web_and_worker_get_the_same_production_environment(compose):
    web, worker = compose["services"]["web"]["environment"], compose["services"]["worker"]["environment"]
    shared = {k: v for k, v in web.items() if k not in WEB_ONLY}
    assert shared == worker
    assert web["DEBUG"] == "0" and web["REDIS_URL"].startswith("redis://redis:")
    assert web["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in web["DATABASE_URL"]
    assert web["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert web["S3_PUBLIC_ENDPOINT_URL"] != web["S3_ENDPOINT_URL"]  # browsers cannot resolve "minio"


def test_every_app_variable_is_one_the_settings_read(compose):
    known = settings_variables() | {"WEB_CONCURRENCY"}  # gunicorn reads WEB_CONCURRENCY itself
    assert "DB_POOL_MAX_SIZE" in known
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "S3_BUCKET"} <= known  # the parser found the settings
    for name in ("web", "worker", "migrate"):
        unknown = set(compose["services"][name]["environment"]) - known
        assert unknown == set(), f"{name} sets variables that settings.py never reads: {sorted(unknown)}"


def test_every_required_compose_variable_is_in_the_example_env_file():
    text = COMPOSE.read_text()
    example = env_example()
    referenced = {m.group(1) for m in VAR.finditer(text)}
    required = {m.group(1) for m in VAR.finditer(text) if m.group(2) in (":?", "?")}
    without_default = {m.group(1) for m in VAR.finditer(text) if m.group(2) is None}
    assert required, "compose.yaml should insist on its secrets with ${NAME:?message}"
    assert (required | without_default) <= set(example), sorted((required | without_default) - set(example))
    assert set(example) <= referenced, f".env.example has unused names: {sorted(set(example) - referenced)}"
    for secret in ("SECRET_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert example[secret] == "", f"{secret} must not ship with a value"


def compose_tool() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_validates_with_the_compose_tool(tmp_path):
    """`docker compose config` needs no engine; the Debian package docker-compose does the same checks."""
    tool = compose_tool()
    assert tool is not None, "no compose CLI: `make test` installs Debian's docker-compose (target system-packages)"
    env = tmp_path / ".env"
    values = {**env_example(), "SECRET_KEY": "k" * 50, "SITE_HOST": "video.example.org", "POSTGRES_PASSWORD": "pw",
              "MINIO_ROOT_PASSWORD": "minio-secret", "S3_PUBLIC_ENDPOINT_URL": "https://files.example.org"}
    env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    done = subprocess.run([*tool, "-f", str(COMPOSE), "--env-file", str(env), "config"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert rendered["services"]["web"]["environment"]["ALLOWED_HOSTS"].startswith("video.example.org")
    # An empty secret stops compose with the variable's name instead of starting a site with no key.
    env.write_text(env.read_text().replace("SECRET_KEY=" + "k" * 50, "SECRET_KEY="))
    failed = subprocess.run([*tool, "-f", str(COMPOSE), "--env-file", str(env), "config"], capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode != 0 and "SECRET_KEY" in failed.stderr


# -- images install the project exactly as CI does: from a committed lock, with hashes ------------------------------

IMAGE_LOCKS = {"web": "requirements/web.txt", "worker": "requirements/worker.txt"}


def run_lines(dockerfile: Path) -> list[str]:
    """RUN instructions with their continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [line[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_installs_its_lock_with_hashes_then_the_project_without_dependencies(image):
    dockerfile = IMAGES[image]
    pip_commands = [cmd.strip() for line in run_lines(dockerfile) for cmd in line.split("&&") if "pip install" in cmd]
    lock = IMAGE_LOCKS[image]
    assert pip_commands == [
        f"python -m pip install --require-hashes --no-deps -r {lock}",
        "python -m pip install --no-deps --no-build-isolation -e .",
    ], f"{dockerfile.name}: only the lock and the project, nothing resolved at build time"
    assert (ROOT / lock).is_file()
    assert f"COPY {lock} /app/{lock}" in dockerfile.read_text()


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_python_is_the_one_the_locks_are_made_for(image):
    text = IMAGES[image].read_text()
    python = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-slim", text, re.MULTILINE)
    assert python, f"{image}: an official python base image"
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required == f"=={python.group(1)}.*"


def test_web_image_installs_no_ml_stack():
    web_lock = (ROOT / IMAGE_LOCKS["web"]).read_text()
    for package in ("torch==", "triton==", "transformers==", "nvidia-"):
        assert f"\n{package}" not in web_lock


def test_worker_image_gets_the_cuda_torch_and_runs_the_gpu_worker():
    text = IMAGES["worker"].read_text()
    worker_lock = (ROOT / IMAGE_LOCKS["worker"]).read_text()
    assert re.search(r"^torch==[\d.]+ \\$", worker_lock, re.MULTILINE), "PyPI's torch (the CUDA build), no +cpu"
    assert "\nnvidia-cudnn-" in worker_lock  # its CUDA libraries come from the lock too
    assert 'CMD ["python", "manage.py", "run_gpu_worker"]' in text
    assert (ROOT / "generation/management/commands/run_gpu_worker.py").is_file()
    assert "\nUSER turbosite\n" in text


def test_web_image_serves_asgi_with_gunicorn_uvicorn_workers_and_collected_static_files():
    text = IMAGES["web"].read_text()
    assert "manage.py collectstatic --noinput" in text
    # ASGI (event streams on the event loop), gunicorn managing the processes; tests/docker/test_asgi_server.py
    # starts this very command.
    assert "gunicorn turbosite.asgi:application --worker-class turbosite.uvicorn_worker.UvicornWorker" in text
    assert "turbosite.wsgi" not in text and "--threads" not in text
    assert "\nUSER turbosite\n" in text and "HEALTHCHECK" in text and "/healthz" in text


def test_the_server_and_whitenoise_are_dependencies_and_wired_in():
    from django.conf import settings

    from turbosite.static_files import WhiteNoiseMiddleware
    from turbosite.uvicorn_worker import UvicornWorker

    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for package in ("gunicorn", "uvicorn-worker", "uvicorn", "whitenoise", "psycopg[binary,pool]"):
        assert package in deps
    web_lock = (ROOT / IMAGE_LOCKS["web"]).read_text()
    for package in ("gunicorn", "uvicorn-worker", "uvicorn", "uvloop", "httptools", "psycopg-pool"):
        assert f"\n{package}==" in web_lock
    assert "turbosite.static_files.WhiteNoiseMiddleware" in settings.MIDDLEWARE
    assert WhiteNoiseMiddleware.__mro__[1].__module__ == "whitenoise.middleware"
    assert UvicornWorker.CONFIG_KWARGS["lifespan"] == "off"  # Django answers no lifespan events


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_build_context_leaves_out_weights_secrets_and_local_state(image):
    ignored = IMAGES[image].with_name(IMAGES[image].name + ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data", "*.pth", "*.safetensors", ".env"):
        assert entry in ignored, f"{image} image would carry {entry}"


def production_env(tmp_path: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("S3_", "DATABASE_", "REDIS_", "QUEUE_", "SECRET_", "DEBUG", "ALLOWED_"))}
    env.update({"DEBUG": "0", "SECRET_KEY": "collectstatic-only", "TURBO_DATA_DIR": str(tmp_path), "PORT": "8000"})
    return env


def test_the_web_images_build_and_start_commands_work_here(tmp_path):
    """The RUN collectstatic line and the gunicorn CMD of Dockerfile.web, run as written with DEBUG off (that the
    server then serves: tests/docker/test_asgi_server.py)."""
    import json
    import shlex
    import sys

    env = production_env(tmp_path)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    text = IMAGES["web"].read_text()
    collect = next(line for line in run_lines(IMAGES["web"]) if "collectstatic" in line).split("&&")[0]
    done = subprocess.run(collect, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "staticfiles" / "staticfiles.json").read_text())
    assert any(name.startswith("css/") for name in manifest["paths"])  # hashed names for WhiteNoise's forever cache

    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    assert command[:2] == ["sh", "-c"]
    gunicorn = shlex.split(command[2].replace("exec ", "", 1).replace("${PORT}", "8000")
                           .replace("${WEB_CONCURRENCY:-3}", "3"))
    checked = subprocess.run([*gunicorn, "--check-config"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
