"""The limits of a job's parameters: the one table that the checks (generation.services), the API and compatibility
serializers with their OpenAPI schema, and the pages' form all read. Plain data: no models, no torch.

Readers look a limit up when they need it (`limit("seed")`), never copy it at import, so what the table says is
what every front end accepts and shows. What stays elsewhere, and why:
- per-model facts (the resolutions a model offers, its frame maximum, fps) are generation.models_catalog's table;
  a request is held to the table here *and* to its model;
- the image's limits (bytes, pixels, sides, aspect ratio) are deployment settings that generation.image_input
  alone checks; the prompt's length is a setting too, named here so the forms and the schema can say it;
- the GPU worker keeps its own guards (inference/ imports nothing of the web side); tests/api/test_limits.py
  checks they accept everything this table lets through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from django.conf import settings


@dataclass(frozen=True)
class Limit:
    """The values one parameter may take: numbers from `minimum` to `maximum` (both included; None: unbounded) on a
    grid of `step` counted from the minimum, or one of `choices`. `default` is used when a request leaves it out.
    `setting` names the deployment setting that gives the maximum (read when looked up)."""

    minimum: float | None = None
    maximum: float | None = None
    step: int | None = None
    choices: tuple[str, ...] = ()
    default: Any = None
    setting: str | None = None

    def allows(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if self.minimum is not None and not value >= self.minimum:  # `not >=` also refuses NaN
            return False
        if self.maximum is not None and not value <= self.maximum:
            return False
        return not self.step or (value - (self.minimum or 0)) % self.step == 0


PARAMETERS: dict[str, Limit] = {
    "prompt": Limit(minimum=1, setting="TURBO_MAX_PROMPT_CHARS"),  # characters, after stripping
    "seed": Limit(minimum=0, maximum=2**63 - 1),  # Job.seed is a PostgreSQL bigint
    "num_steps": Limit(minimum=1, maximum=4, default=4),  # the rCM sampler's 1 to 4 steps
    # 4k+1 (the VAE packs 4 frames after the first); the maximum is the model's own (models_catalog).
    "num_frames": Limit(minimum=5, step=4),
    # Every resolution a model may offer (each model lists its own, models_catalog); default: the model's.
    "resolution": Limit(choices=("480p", "720p")),
    # How the image meets the video size; the first, the reference's own preprocessing, is the default.
    "resize_mode": Limit(choices=("stretch", "crop", "pad"), default="stretch"),
    "loras": Limit(maximum=3),  # LoRAs per job
    "lora_strength": Limit(minimum=-4.0, maximum=4.0),
    # The compatibility route's video length in seconds; the model's frame maximum caps it further.
    "duration_seconds": Limit(minimum=0.01, maximum=60),
    "idempotency_key": Limit(maximum=255),  # printable characters
}


def limit(name: str) -> Limit:
    """The limit in force for parameter `name`, with its setting's value as the maximum where it names one."""
    entry = PARAMETERS[name]
    if entry.setting:
        return replace(entry, maximum=int(getattr(settings, entry.setting)))
    return entry


# -- for the forms and serializers that show the table ---------------------------------------------------------

Field = TypeVar("Field")
REMAKE = "remake_from_table"  # the attribute that marks a field made from the table


def from_table(make: Callable[[], Field]) -> Field:
    """The field `make()` builds from this table, marked so that remake_table_fields builds it again. Fields are
    class attributes, made once at import; the table is read again for each form and serializer."""
    field = make()
    setattr(field, REMAKE, make)
    return field


def remake_table_fields(fields: dict[str, Any], declared: Mapping[str, Any]) -> None:
    """Build again, from the table as it is now, each field of `fields` whose declared original (`declared`: a
    form's base_fields, a serializer's _declared_fields) came from from_table."""
    for name, original in declared.items():
        make = getattr(original, REMAKE, None)
        if make is not None and name in fields:
            fields[name] = from_table(make)
