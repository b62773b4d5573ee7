"""The "new video" form. It only parses types; every rule (frame counts, limits, image checks) is enforced by
generation.services so the pages, the API and the compatibility routes answer the same way. Its bounds, choices
and help come from generation.limits, read again for each form."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from generation import loras_catalog, models_catalog
from generation.limits import from_table, limit, remake_table_fields

LORA_FIELD_PREFIX = "lora__"
RESIZE_LABELS = {
    "stretch": "Stretch to the video size (as the model was trained)",
    "crop": "Crop the centre to the video's shape",
    "pad": "Fit inside, black bars",
}


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


def step_choices() -> list[tuple[int, str]]:
    """Most steps first: "4 steps (best quality)" ... "1 step (fastest)"."""
    allowed = limit("num_steps")
    low, high = int(allowed.minimum), int(allowed.maximum)
    notes = {high: " (best quality)", low: " (fastest)"}
    return [(n, f"{n} step{'' if n == 1 else 's'}{notes.get(n, '')}") for n in range(high, low - 1, -1)]


def prompt_field() -> forms.CharField:
    return forms.CharField(
        strip=True, max_length=int(limit("prompt").maximum),
        help_text="What should happen: motion, camera, mood.",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "The waves roll in slowly while the camera pans left"}),
    )


def seed_field() -> forms.IntegerField:
    allowed = limit("seed")
    return forms.IntegerField(required=False, min_value=allowed.minimum, max_value=allowed.maximum,
                              help_text="Leave empty for a random seed; the same seed and settings repeat a video.")


def num_steps_field() -> forms.TypedChoiceField:
    return forms.TypedChoiceField(choices=step_choices(), coerce=int, initial=limit("num_steps").default,
                                  label="Steps")


def resolution_field() -> forms.ChoiceField:
    return forms.ChoiceField(choices=[("", "Model default"), *((name, name) for name in limit("resolution").choices)],
                             required=False)


def num_frames_field() -> forms.IntegerField:
    allowed = limit("num_frames")
    field = forms.IntegerField(required=False, min_value=1, label="Frames",
                               help_text=f"{allowed.step}k+1 frames (17, 33, 49, 81 …); empty for the model's "
                                         "default.")
    # The browser's number box steps through the valid counts; generation.services checks them (and the model's
    # own maximum) with a message that names the rule.
    field.widget.attrs.update(min=allowed.minimum, max=models_catalog.largest_max_frames(), step=allowed.step)
    return field


def resize_mode_field() -> forms.ChoiceField:
    allowed = limit("resize_mode")
    return forms.ChoiceField(choices=[(mode, RESIZE_LABELS.get(mode, mode)) for mode in allowed.choices],
                             initial=allowed.default, required=False, label="Image fit")


def lora_field(entry: dict[str, Any]) -> forms.FloatField:
    """One strength box for an installed LoRA (empty: not used); the service checks the count and the model."""
    strength, count = limit("lora_strength"), limit("loras")
    return forms.FloatField(
        required=False, min_value=strength.minimum, max_value=strength.maximum,
        label=f"LoRA: {entry['title']} ({entry['model']})",
        help_text=f"{entry['description']} Strength, e.g. {entry['default_strength']:g}; empty: not used. "
                  f"Up to {count.maximum} LoRAs.".strip(),
        widget=forms.NumberInput(attrs={"step": "0.05", "placeholder": f"{entry['default_strength']:g}"}),
    )


class NewVideoForm(forms.Form):
    image = forms.FileField(
        help_text="JPEG, PNG or WebP. The video starts from this picture.",
        widget=forms.ClearableFileInput(attrs={"accept": "image/*", "data-preview": "image-preview"}),
    )
    prompt = from_table(prompt_field)
    seed = from_table(seed_field)
    num_steps = from_table(num_steps_field)
    resolution = from_table(resolution_field)
    num_frames = from_table(num_frames_field)
    adaptive_resolution = forms.BooleanField(required=False, initial=True, label="Keep the image's aspect ratio")
    ode = forms.BooleanField(required=False, label="Deterministic sampling (ODE)")
    resize_mode = from_table(resize_mode_field)
    model = forms.ChoiceField(choices=(), required=False, widget=ModelSelect)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        remake_table_fields(self.fields, self.base_fields)
        choices, unavailable = model_choices()
        field = self.fields["model"]
        field.choices = choices
        field.widget.unavailable = unavailable
        runnable = [name for name, _ in choices if name not in unavailable]
        # Start on a model that can run: the default one when it is installed, else the first that is.
        field.initial = (settings.TURBO_DEFAULT_MODEL if settings.TURBO_DEFAULT_MODEL not in unavailable
                         else (runnable[0] if runnable else settings.TURBO_DEFAULT_MODEL))
        for entry in loras_catalog.list_loras():
            self.fields[f"{LORA_FIELD_PREFIX}{entry['name']}"] = lora_field(entry)

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
