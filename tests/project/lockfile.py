"""Reading the committed locks (requirements/*.txt, written by `make lock` with uv) for the tests."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;\s*(.+?))?\s*\\?$")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Pin:
    name: str
    version: str
    marker: str | None
    hashes: list[str] = field(default_factory=list)


def read_lock(name: str) -> dict[str, Pin]:
    """Pins of requirements/<name>.txt by canonical name, with their hashes."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in (LOCKS / f"{name}.txt").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash=sha256:"):
            assert current is not None, f"hash before any pin in {name}.txt"
            current.hashes.append(stripped.removeprefix("--hash=sha256:").rstrip(" \\"))
            continue
        match = PIN.match(stripped)
        assert match, f"{name}.txt: not a pinned requirement: {line!r}"
        current = Pin(canonical(match.group(1)), match.group(2), match.group(3))
        assert current.name not in pins, f"{current.name} pinned twice in {name}.txt"
        pins[current.name] = current
    return pins
