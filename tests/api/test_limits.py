"""generation.limits is the one source of the job parameters' limits: the service checks, the v1 API, the
compatibility API, the pages' form and the OpenAPI schema all follow it when it changes, and the GPU worker's own
guards accept everything it lets through."""

from __future__ import annotations

import dataclasses

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator

from generation import limits, models_catalog, services
from generation.models import Job
from generation.pages.forms import NewVideoForm
from generation.services import JobRejected
from tests.factories import png_bytes, png_upload

JOBS = "/api/v1/jobs/"
COMPAT = "/v1/turbodiffusion/wan22-i2v/jobs"


def narrow(monkeypatch, name: str, **changes) -> limits.Limit:
    """Change one row of the table for this test."""
    row = dataclasses.replace(limits.PARAMETERS[name], **changes)
    monkeypatch.setitem(limits.PARAMETERS, name, row)
    return row


def upload():
    return png_upload("photo.png", png_bytes(96, 80, (200, 40, 40)))


def api_create(client, **fields):
    return client.post(JOBS, {"prompt": "waves", "image": upload(), "num_frames": "5", **fields}, format="multipart")


def compat_create(client, **fields):
    return client.post(COMPAT, {"prompt": "waves", "image": upload(), **fields}, format="multipart")


def form_errors(**fields) -> dict:
    form = NewVideoForm({"prompt": "waves", "num_steps": "4", "model": "tiny", **fields}, {"image": upload()})
    form.is_valid()
    return form.errors


@pytest.fixture
def alice(user, token_client, settings):
    settings.TURBO_MAX_ACTIVE_JOBS = 0
    return token_client(user)


def schema_properties(component: str) -> dict:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]
    properties = components[component]["properties"]
    for prop in properties.values():  # an enum is a component of its own
        if "$ref" in prop or "allOf" in prop or "oneOf" in prop:
            refs = [prop.get("$ref")] + [part.get("$ref") for part in prop.get("allOf", []) + prop.get("oneOf", [])]
            for ref in filter(None, refs):
                prop.setdefault("enum", components[ref.rsplit("/", 1)[1]].get("enum"))
    return properties


# -- the schema shows the table -------------------------------------------------------------------------------

def test_the_schema_shows_the_tables_values():
    create = schema_properties("JobCreate")
    assert (create["seed"]["minimum"], create["seed"]["maximum"]) == (0, limits.limit("seed").maximum)
    assert (create["num_steps"]["minimum"], create["num_steps"]["maximum"]) == (1, 4)
    assert create["num_steps"]["default"] == limits.limit("num_steps").default
    assert (create["num_frames"]["minimum"], create["num_frames"]["maximum"]) == (
        5, max(spec.max_frames for spec in models_catalog.MODELS.values()))
    assert tuple(create["resolution"]["enum"]) == limits.limit("resolution").choices
    assert tuple(create["resize_mode"]["enum"]) == ("stretch", "crop", "pad")
    assert "Up to 3 installed LoRAs" in create["loras"]["description"]
    assert "at most 2000 characters" in create["prompt"]["description"]
    compat = schema_properties("CompatCreate")
    assert (compat["duration_seconds"]["minimum"], compat["duration_seconds"]["maximum"]) == (0.01, 60)
    assert compat["seed"]["maximum"] == limits.limit("seed").maximum and compat["num_steps"]["maximum"] == 4


def test_the_schema_follows_a_change_of_the_table(monkeypatch, settings):
    narrow(monkeypatch, "num_steps", maximum=2)
    narrow(monkeypatch, "seed", maximum=1000)
    narrow(monkeypatch, "resize_mode", choices=("stretch", "crop"))
    narrow(monkeypatch, "duration_seconds", maximum=5)
    narrow(monkeypatch, "loras", maximum=2)
    settings.TURBO_MAX_PROMPT_CHARS = 300
    create = schema_properties("JobCreate")
    assert create["num_steps"]["maximum"] == 2 and create["seed"]["maximum"] == 1000
    assert tuple(create["resize_mode"]["enum"]) == ("stretch", "crop")
    assert "Up to 2 installed LoRAs" in create["loras"]["description"]
    assert "at most 300 characters" in create["prompt"]["description"]
    compat = schema_properties("CompatCreate")
    assert compat["duration_seconds"]["maximum"] == 5 and compat["num_steps"]["maximum"] == 2


# -- every front end accepts what the table says --------------------------------------------------------------

@pytest.mark.django_db
def test_fewer_steps_in_the_table_are_fewer_everywhere(monkeypatch, alice):
    assert api_create(alice, num_steps="3").status_code == 201
    narrow(monkeypatch, "num_steps", maximum=2)
    api = api_create(alice, num_steps="3")
    assert api.status_code == 400 and api.json()["field"] == "num_steps" and "2" in api.json()["detail"]
    compat = compat_create(alice, num_steps="3")
    assert compat.status_code == 400 and "num_steps" in compat.json()["detail"]
    assert "num_steps" in form_errors(num_steps="3")
    assert [value for value, _ in NewVideoForm().fields["num_steps"].choices] == [2, 1]
    with pytest.raises(JobRejected, match="num_steps must be 1 or 2, got 3"):
        services.validate_parameters(prompt="p", num_steps=3)
    assert api_create(alice, num_steps="2").status_code == 201
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_a_lower_seed_maximum_is_lower_everywhere(monkeypatch, alice):
    narrow(monkeypatch, "seed", maximum=1000)
    assert api_create(alice, seed="1001").json()["field"] == "seed"
    assert "seed" in compat_create(alice, seed="1001").json()["detail"]
    assert "seed" in form_errors(seed="1001")
    assert NewVideoForm().fields["seed"].widget.attrs["max"] == 1000
    with pytest.raises(JobRejected, match="between 0 and 1000"):
        services.validate_parameters(prompt="p", seed=1001)
    for _ in range(3):  # a random seed is drawn within the table too
        assert 0 <= services.random_seed() <= 1000
    assert api_create(alice, seed="1000").status_code == 201


@pytest.mark.django_db
def test_choices_of_the_table_are_the_choices_everywhere(monkeypatch, alice):
    narrow(monkeypatch, "resize_mode", choices=("stretch", "crop"))
    narrow(monkeypatch, "resolution", choices=("480p",))
    assert api_create(alice, resize_mode="pad").json()["field"] == "resize_mode"
    assert api_create(alice, resolution="720p").json()["field"] == "resolution"
    assert {"resize_mode", "resolution"} <= set(form_errors(resize_mode="pad", resolution="720p"))
    with pytest.raises(JobRejected, match="resolution must be one of 480p, got '720p'"):
        services.validate_parameters(prompt="p", resolution="720p")
    with pytest.raises(JobRejected, match="resize_mode must be one of stretch, crop"):
        services.validate_parameters(prompt="p", resize_mode="pad")


@pytest.mark.django_db
def test_frames_and_durations_follow_the_table(monkeypatch, alice):
    narrow(monkeypatch, "num_frames", minimum=9)
    assert api_create(alice, num_frames="5").json()["detail"].startswith("num_frames must be 4k+1 between 9 and")
    assert NewVideoForm().fields["num_frames"].widget.attrs["min"] == 9
    narrow(monkeypatch, "duration_seconds", maximum=5)
    compat = compat_create(alice, duration_seconds="6")
    assert compat.status_code == 400 and "duration_seconds" in compat.json()["detail"]
    assert compat_create(alice, duration_seconds="5").status_code == 200


@pytest.mark.django_db
def test_the_prompt_limit_is_the_setting_the_table_names(settings, alice):
    settings.TURBO_MAX_PROMPT_CHARS = 10
    assert limits.limit("prompt").maximum == 10
    response = api_create(alice, prompt="x" * 11)
    assert response.status_code == 400 and "limit is 10" in response.json()["detail"]
    assert "prompt" in form_errors(prompt="x" * 11)


@pytest.mark.django_db
def test_the_pages_form_follows_the_table(monkeypatch, user):
    narrow(monkeypatch, "num_steps", maximum=3)
    client = Client()
    client.force_login(user)
    html = client.get("/").content.decode()
    assert '<option value="3">3 steps (best quality)</option>' in html and '<option value="4"' not in html
    assert '<option value="1">1 step (fastest)</option>' in html
    assert 'name="num_frames" min="5" max="161" step="4"' in html  # the browser's box steps through 4k+1
    assert 'name="seed" min="0" max="9223372036854775807"' in html


# -- the worker's own guards accept what the table lets through ------------------------------------------------

def test_the_workers_guards_accept_the_tables_extremes():
    # The worker (pure PyTorch) keeps its own guards; the web's table must stay inside them.
    from inference import lora
    from inference.configs import MODELS
    from inference.pipeline import SEED_LIMIT, resolve_request
    from inference.types import RESIZE_MODES

    seed, steps, frames = limits.limit("seed"), limits.limit("num_steps"), limits.limit("num_frames")
    assert seed.minimum >= 0 and seed.maximum < SEED_LIMIT
    assert limits.limit("resize_mode").choices == RESIZE_MODES
    assert (limits.limit("loras").maximum, limits.limit("lora_strength").maximum) == (lora.MAX_LORAS,
                                                                                     lora.STRENGTH_LIMIT)
    assert limits.limit("lora_strength").minimum == -lora.STRENGTH_LIMIT
    for name, config in MODELS.items():
        assert (steps.minimum, steps.maximum) == (1, config.sampler.max_steps), name
        assert set(models_catalog.MODELS[name].resolutions) <= set(limits.limit("resolution").choices)
        for value, count in ((seed.minimum, frames.minimum), (seed.maximum, config.max_frames)):
            resolved = resolve_request(config, seed=int(value), num_steps=int(steps.maximum), resolution=None,
                                       num_frames=int(count))
            assert (resolved.seed, resolved.num_frames) == (value, count)
    assert set(models_catalog.OUTPUT_LONG_SIDE) == set(limits.limit("resolution").choices)
