"""The LoRAs an operator installed, read from their manifests only (plain JSON: the web side never loads weights,
never imports torch or `inference`).

Layout (inference/weights.md, "LoRA"): `$TURBO_MODEL_DIR/loras/<name>/manifest.json` with title, description,
the model it was trained for (default wan2.2-i2v-a14b), the high_noise / low_noise file names and
default_strength. The worker reads the same manifest and the weight files when a job names the LoRA.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from django.conf import settings

from generation.limits import limit

log = logging.getLogger(__name__)

DEFAULT_MODEL = "wan2.2-i2v-a14b"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
REPORT_KEY = "_loras"  # where a worker's weights report (generation.models.Worker.weights) carries its LoRAs


def _root() -> Path | None:
    return Path(settings.TURBO_MODEL_DIR) / "loras" if settings.TURBO_MODEL_DIR else None


def read_folder(root: Path | None) -> list[dict[str, object]]:
    """Every valid LoRA under `root` (a loras/ folder), sorted by name: what a GPU worker reports."""
    if root is None or not root.is_dir():
        return []
    entries = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and NAME_PATTERN.match(folder.name) and (folder / "manifest.json").is_file():
            entry = _entry(folder)
            if entry is not None:
                entries.append(entry)
    return entries


def _reported() -> list[dict[str, object]]:
    """LoRAs the live GPU workers reported in their registry rows (the web host need not see the files)."""
    from generation.models import Worker

    entries = []
    for worker in Worker.live().order_by("-heartbeat_at"):
        for entry in (worker.weights or {}).get(REPORT_KEY, []) or []:
            if isinstance(entry, dict) and NAME_PATTERN.match(str(entry.get("name", ""))):
                entries.append(entry)
    return entries


def _entry(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        log.warning("LoRA %s: manifest.json cannot be read (%s); not listed", folder.name, exc)
        return None
    if not isinstance(data, dict):
        log.warning("LoRA %s: manifest.json is not an object; not listed", folder.name)
        return None
    experts = [expert for expert, key in (("high", "high_noise"), ("low", "low_noise")) if data.get(key)]
    if not experts:
        log.warning("LoRA %s: manifest.json names no file (high_noise / low_noise); not listed", folder.name)
        return None
    strengths = limit("lora_strength")  # a manifest's default is clamped to the range a request may ask
    try:
        strength = float(data.get("default_strength", 1.0))
    except (TypeError, ValueError):
        strength = 1.0
    return {
        "name": folder.name,
        "title": str(data.get("title") or folder.name)[:120],
        "description": str(data.get("description") or "")[:500],
        "model": str(data.get("model") or DEFAULT_MODEL),
        "experts": experts,
        "default_strength": max(strengths.minimum, min(strengths.maximum, strength)),
    }


def list_loras(model: str | None = None) -> list[dict[str, object]]:
    """Installed LoRAs (for `model` only, when given), sorted by name: those the live GPU workers report, and those
    under this process's own $TURBO_MODEL_DIR/loras when it can see it (the embedded worker). Folders with a bad
    manifest are logged and left out."""
    by_name: dict[str, dict[str, object]] = {}
    for entry in [*read_folder(_root()), *_reported()]:
        by_name.setdefault(str(entry["name"]), entry)
    return [by_name[name] for name in sorted(by_name) if model is None or by_name[name]["model"] == model]


def with_loras(models: list[dict[str, object]]) -> list[dict[str, object]]:
    """The model listing with each model's installed LoRAs under "loras" (one read of the folder)."""
    entries = list_loras()
    return [{**m, "loras": [e for e in entries if e["model"] == m["name"]]} for m in models]
