"""LoRAs on the web side: listed from their manifests (no torch), named per job with strengths, checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from generation import loras_catalog, services
from generation.models import Job
from generation.services import JobRejected

JOBS = "/api/v1/jobs/"


def install(root: Path, name: str, *, model: str = "tiny", strength: float = 0.8, files: bool = True) -> None:
    folder = root / "loras" / name
    folder.mkdir(parents=True)
    manifest = {"title": name.title(), "description": f"{name} look", "model": model, "default_strength": strength}
    if files:
        manifest |= {"high_noise": "high.safetensors", "low_noise": "low.safetensors"}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def lora_dir(tmp_path, settings) -> Path:
    settings.TURBO_MODEL_DIR = str(tmp_path)
    for name in ("ink", "glow", "rain", "snow"):
        install(tmp_path, name)
    install(tmp_path, "cinematic", model="wan2.2-i2v-a14b", strength=1.0)
    install(tmp_path, "empty", files=False)  # names no file: left out, logged
    (tmp_path / "loras" / "broken").mkdir()
    (tmp_path / "loras" / "broken" / "manifest.json").write_text("{not json")
    return tmp_path


@pytest.fixture
def alice(user, token_client):
    return token_client(user)


def post_job(client, upload, **fields):
    return client.post(JOBS, {"prompt": "ink in water", "image": upload, **fields}, format="multipart")


def test_models_listing_shows_each_models_loras(alice, lora_dir):
    models = {m["name"]: m for m in alice.get("/api/v1/models/").json()}
    assert [lo["name"] for lo in models["tiny"]["loras"]] == ["glow", "ink", "rain", "snow"]
    ink = next(lo for lo in models["tiny"]["loras"] if lo["name"] == "ink")
    assert ink == {"name": "ink", "title": "Ink", "description": "ink look", "experts": ["high", "low"],
                   "default_strength": 0.8}
    assert [lo["name"] for lo in models["wan2.2-i2v-a14b"]["loras"]] == ["cinematic"]


def test_no_model_dir_means_no_loras(alice, settings):
    settings.TURBO_MODEL_DIR = ""
    assert all(m["loras"] == [] for m in alice.get("/api/v1/models/").json())


def test_a_job_names_loras_with_strengths_and_retry_keeps_them(alice, lora_dir, image_upload, enqueued):
    response = post_job(alice, image_upload(), loras=["ink:0.5", "glow"])
    assert response.status_code == 201, response.json()
    body = response.json()
    expected = [{"name": "ink", "strength": 0.5}, {"name": "glow", "strength": 0.8}]  # glow: its default
    assert body["parameters"]["loras"] == expected
    job = Job.objects.get(id=body["id"])
    assert job.loras == expected
    job.fail("boom")
    again = alice.post(f"{JOBS}{job.id}/retry/")
    assert again.status_code == 201 and again.json()["parameters"]["loras"] == expected


@pytest.mark.parametrize(("loras", "fragment"), [
    (["sepia"], "LoRA 'sepia' is not installed; installed for tiny: glow, ink, rain, snow"),
    (["cinematic"], "LoRA 'cinematic' is for model wan2.2-i2v-a14b, not tiny"),
    (["ink", "glow", "rain", "snow"], "at most 3 LoRAs per job, got 4"),
    (["ink:0.5", "ink:1"], "named twice"),
    (["ink:9"], "between -4 and 4, got 9.0"),
    (["ink:nan"], "between -4 and 4"),
    (["ink:strong"], "must be a number, got 'strong'"),
    (["empty"], "'empty' is not installed"),
])
def test_bad_lora_choices_are_400_naming_the_problem(alice, lora_dir, image_upload, loras, fragment):
    response = post_job(alice, image_upload(), loras=loras)
    assert response.status_code == 400
    assert response.json()["field"] == "loras" and fragment in response.json()["detail"]
    assert not Job.objects.exists()


def test_service_takes_pairs_and_dicts(db, lora_dir):
    params = services.validate_parameters(prompt="p", loras=[("ink", 1.5), {"name": "rain", "strength": -0.25}])
    assert params.loras == (("ink", 1.5), ("rain", -0.25))
    with pytest.raises(JobRejected, match="not installed"):
        services.validate_parameters(prompt="p", loras="nope")


def test_worker_limits_agree_with_the_web_copies():
    from inference import lora

    # The count and strength limits are generation.limits' (tests/api/test_limits.py checks them against the worker's)
    assert loras_catalog.NAME_PATTERN.pattern == lora.NAME_PATTERN.pattern


def test_the_catalog_imports_no_torch(lora_dir):
    code = ("import sys; sys.modules['torch'] = None; import django, os; "
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'turbosite.settings'); django.setup(); "
            "from generation import loras_catalog; "
            "from pathlib import Path; "
            f"print([e['name'] for e in loras_catalog.read_folder(Path({str(lora_dir)!r}) / 'loras')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "TURBO_TEST_EMBEDDED": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['cinematic', 'glow', 'ink', 'rain', 'snow']"


def test_loras_reported_by_a_live_worker_are_listed_without_the_files(alice, lora_dir, settings):
    from generation import worker
    from generation.models import Worker

    report = worker.weights_report()  # on the GPU host: reads the manifests under TURBO_MODEL_DIR/loras
    assert [e["name"] for e in report[loras_catalog.REPORT_KEY]] == ["cinematic", "glow", "ink", "rain", "snow"]
    Worker.report("gpu-host:1", report, starting=True)
    settings.TURBO_MODEL_DIR = ""  # the web host: no weights folder at all
    models = {m["name"]: m for m in alice.get("/api/v1/models/").json()}
    assert [lo["name"] for lo in models["tiny"]["loras"]] == ["glow", "ink", "rain", "snow"]
    assert models["tiny"]["installed"] is True
    assert services.validate_parameters(prompt="p", loras=["rain:0.5"]).loras == (("rain", 0.5),)
