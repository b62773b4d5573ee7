"""What the web side knows about the models: names, frame limits, resolutions, and whether some GPU worker can run
each one.

The descriptions are plain data here (the web process carries no torch and no `inference`; a test keeps them equal
to inference/configs.py). Whether a model's weights are installed is what the GPU workers report in their registry
rows (generation.models.Worker, written at start and on every heartbeat): the weight files live on the GPU hosts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.conf import settings

from generation.models import Worker


class UnknownModel(ValueError):
    """A model name the catalog does not know. The message lists the known names."""


@dataclass(frozen=True)
class ModelSpec:
    """A model as inference/configs.py describes it, reduced to what requests and pages need."""

    name: str
    resolutions: tuple[str, ...]
    default_resolution: str
    default_frames: int
    max_frames: int
    fps: int
    builtin_weights: bool  # seeded random weights made at load time: nothing to install
    weight_files: tuple[str, ...]  # what a weights folder must hold (inference/weights.md)


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec(name="wan2.2-i2v-a14b", resolutions=("480p", "720p"), default_resolution="720p", default_frames=81,
              max_frames=161, fps=16, builtin_weights=False,
              weight_files=("TurboWan2.2-I2V-A14B-high-720P-quant.pth", "TurboWan2.2-I2V-A14B-low-720P-quant.pth",
                            "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl")),
    ModelSpec(name="tiny", resolutions=("480p", "720p"), default_resolution="480p", default_frames=17,
              max_frames=161, fps=16, builtin_weights=True, weight_files=()),
)}


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


def _reports() -> list[dict[str, dict[str, object]]]:
    """The weight reports of the live workers, freshest first."""
    return [worker.weights for worker in Worker.live().order_by("-heartbeat_at")]


def _facts(spec: ModelSpec, reports: list[dict[str, dict[str, object]]]) -> ModelFacts:
    if spec.builtin_weights:
        installed, missing = True, []
    else:
        mine = [report[spec.name] for report in reports if isinstance(report.get(spec.name), dict)]
        installed = any(bool(status.get("installed")) for status in mine)
        if installed:
            missing = []
        elif mine:
            missing = [str(name) for name in mine[0].get("missing") or spec.weight_files]
        else:
            missing = list(spec.weight_files)  # no live GPU worker has reported these files
    return ModelFacts(
        name=spec.name,
        installed=installed,
        missing=missing,
        default_frames=spec.default_frames,
        max_frames=spec.max_frames,
        fps=spec.fps,
        resolutions=list(spec.resolutions),
        default_resolution=spec.default_resolution,
        default=spec.name == settings.TURBO_DEFAULT_MODEL,
    )


def model_names() -> list[str]:
    return sorted(MODELS)


def get_model(name: str | None = None) -> ModelFacts:
    """Facts for `name`, or for the deployment's default model when None. Raises UnknownModel."""
    name = name or settings.TURBO_DEFAULT_MODEL
    spec = MODELS.get(name)
    if spec is None:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return _facts(spec, [] if spec.builtin_weights else _reports())


# The long side of the video each resolution name stands for (inference/configs.py; the tiny model's are smaller).
OUTPUT_LONG_SIDE = {"480p": 832, "720p": 1280}


def largest_output_side() -> int:
    """The longest side of any output any model makes: an input image larger than this on its shorter side
    carries nothing an output can use (generation.image_input shrinks it on arrival)."""
    return max(OUTPUT_LONG_SIDE[name] for spec in MODELS.values() for name in spec.resolutions)


def largest_max_frames() -> int:
    """The most frames any model makes: the upper bound the API schema and the pages' form show for num_frames
    (each request is held to its own model's max_frames by generation.services)."""
    return max(spec.max_frames for spec in MODELS.values())


def list_models() -> list[dict[str, object]]:
    """Every model, the default first, as plain dicts (name, installed, missing, frame and resolution facts)."""
    reports = _reports()
    facts = [_facts(spec, reports) for spec in MODELS.values()]
    facts.sort(key=lambda f: (not f.default, f.name))
    return [f.as_dict() for f in facts]
