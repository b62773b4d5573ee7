"""What the web side may know about the models: names, frame limits, resolutions and whether weights are installed.

`generation` may import `inference` only in actors and commands (ARCHITECTURE.md), so every model fact the API,
services and pages need goes through this adapter, which imports `inference` lazily and hands back plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings


class UnknownModel(ValueError):
    """A model name the catalog does not know. The message lists the known names."""


@dataclass(frozen=True)
class ModelFacts:
    name: str
    installed: bool
    missing: list[str] = field(default_factory=list)
    default_frames: int = 81
    max_frames: int = 161
    fps: int = 16
    resolutions: list[str] = field(default_factory=list)
    default_resolution: str = "480p"
    default: bool = False  # the deployment's TURBO_DEFAULT_MODEL

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _weights_dir() -> Path | None:
    return Path(settings.TURBO_MODEL_DIR) if settings.TURBO_MODEL_DIR else None


def _facts(config) -> ModelFacts:
    if config.random_weights:
        # Nothing to look for on disk; skip importing the checkpoint module (and torch) on the request path.
        installed, missing = True, []
    else:
        from inference.checkpoint import weights_status

        status = weights_status(config, _weights_dir())
        installed, missing = bool(status["installed"]), list(status["missing"])
    return ModelFacts(
        name=config.name,
        installed=installed,
        missing=missing,
        default_frames=config.default_frames,
        max_frames=config.max_frames,
        fps=config.fps,
        resolutions=list(config.resolutions),
        default_resolution=config.default_resolution,
        default=config.name == settings.TURBO_DEFAULT_MODEL,
    )


def model_names() -> list[str]:
    from inference.configs import MODELS

    return sorted(MODELS)


def get_model(name: str | None = None) -> ModelFacts:
    """Facts for `name`, or for the deployment's default model when None. Raises UnknownModel."""
    from inference.configs import MODELS

    name = name or settings.TURBO_DEFAULT_MODEL
    config = MODELS.get(name)
    if config is None:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return _facts(config)


def list_models() -> list[dict[str, object]]:
    """Every model, the default first, as plain dicts (name, installed, missing, frame and resolution facts)."""
    from inference.configs import MODELS

    facts = [_facts(config) for config in MODELS.values()]
    facts.sort(key=lambda f: (not f.default, f.name))
    return [f.as_dict() for f in facts]
