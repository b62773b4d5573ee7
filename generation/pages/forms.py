"""The "new video" form. It only parses types; every rule (frame counts, limits, image checks) is enforced by
generation.services so the pages, the API and the compatibility routes answer the same way."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from generation import loras_catalog, models_catalog
from generation.services import MAX_SEED, RESIZE_MODES

LORA_FIELD_PREFIX = "lora__"
RESIZE_LABELS = {
    "stretch": "Stretch to the video size (as the model was trained)",
    "crop": "Crop the centre to the video's shape",
    "pad": "Fit inside, black bars",
}
STEP_CHOICES = [(4, "4 steps (best quality)"), (3, "3 steps"), (2, "2 steps"), (1, "1 step (fastest)")]


def model_choices() -> tuple[list[tuple[str, str]], set[str]]:
    """Every model as (name, label), and the names that cannot run here (shown, disabled, with the reason)."""
    choices, unavailable = [], set()
    for facts in models_catalog.list_models():
        label = str(facts["name"])
        if facts["default"]:
            label += " (default)"
        if not facts["installed"]:
            label += " (not available: its weights are not installed on this server)"
            unavailable.add(str(facts["name"]))
        choices.append((str(facts["name"]), label))
    return choices, unavailable


class ModelSelect(forms.Select):
    """A select whose models without weights are listed but cannot be picked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unavailable: set[str] = set()

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        if str(value) in self.unavailable:
            option["attrs"]["disabled"] = True
        return option


class NewVideoForm(forms.Form):
    image = forms.FileField(
        help_text="JPEG, PNG or WebP. The video starts from this picture.",
        widget=forms.ClearableFileInput(attrs={"accept": "image/*", "data-preview": "image-preview"}),
    )
    prompt = forms.CharField(
        strip=True,
        max_length=settings.TURBO_MAX_PROMPT_CHARS,
        help_text="What should happen: motion, camera, mood.",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "The waves roll in slowly while the camera pans left"}),
    )
    seed = forms.IntegerField(required=False, min_value=0, max_value=MAX_SEED,
                              help_text="Leave empty for a random seed; the same seed and settings repeat a video.")
    num_steps = forms.TypedChoiceField(choices=STEP_CHOICES, coerce=int, initial=4, label="Steps")
    resolution = forms.ChoiceField(choices=[("", "Model default"), ("480p", "480p"), ("720p", "720p")],
                                   required=False)
    num_frames = forms.IntegerField(required=False, min_value=1, label="Frames",
                                    help_text="4k+1 frames (17, 33, 49, 81 …); empty for the model's default.")
    adaptive_resolution = forms.BooleanField(required=False, initial=True, label="Keep the image's aspect ratio")
    ode = forms.BooleanField(required=False, label="Deterministic sampling (ODE)")
    resize_mode = forms.ChoiceField(choices=[(mode, RESIZE_LABELS[mode]) for mode in RESIZE_MODES],
                                    initial=RESIZE_MODES[0], required=False, label="Image fit")
    model = forms.ChoiceField(choices=(), required=False, widget=ModelSelect)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices, unavailable = model_choices()
        field = self.fields["model"]
        field.choices = choices
        field.widget.unavailable = unavailable
        runnable = [name for name, _ in choices if name not in unavailable]
        # Start on a model that can run: the default one when it is installed, else the first that is.
        field.initial = (settings.TURBO_DEFAULT_MODEL if settings.TURBO_DEFAULT_MODEL not in unavailable
                         else (runnable[0] if runnable else settings.TURBO_DEFAULT_MODEL))
        # One strength box per installed LoRA (empty: not used); the service checks the count and the model.
        for entry in loras_catalog.list_loras():
            self.fields[f"{LORA_FIELD_PREFIX}{entry['name']}"] = forms.FloatField(
                required=False, min_value=-loras_catalog.STRENGTH_LIMIT, max_value=loras_catalog.STRENGTH_LIMIT,
                label=f"LoRA: {entry['title']} ({entry['model']})",
                help_text=f"{entry['description']} Strength, e.g. {entry['default_strength']:g}; empty: not used. "
                          f"Up to {loras_catalog.MAX_LORAS} LoRAs.".strip(),
                widget=forms.NumberInput(attrs={"step": "0.05", "placeholder": f"{entry['default_strength']:g}"}),
            )

    def service_arguments(self) -> dict[str, Any]:
        """The cleaned values as generation.services.create_job keywords."""
        data = self.cleaned_data
        return {
            "image": data["image"],
            "prompt": data["prompt"],
            "seed": data.get("seed"),
            "num_steps": data["num_steps"],
            "resolution": data.get("resolution") or None,
            "num_frames": data.get("num_frames"),
            "adaptive_resolution": bool(data.get("adaptive_resolution")),
            "ode": bool(data.get("ode")),
            "resize_mode": data.get("resize_mode") or None,
            "loras": [f"{name[len(LORA_FIELD_PREFIX):]}:{value}" for name, value in data.items()
                      if name.startswith(LORA_FIELD_PREFIX) and value is not None],
            "model": data.get("model") or None,
        }
