"""The environment is the lock: what `make install` builds must be exactly what requirements/dev.txt pins, and the
three locks (development, GPU worker, web) must be one resolution that honours pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.project.lockfile import ROOT, canonical, read_lock

LOCK_NAMES = ("dev", "worker", "web")
# The installer that `python -m venv` puts in every environment, and this project itself (installed editable).
NOT_IN_LOCK = {"pip", "turbosite"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_installed_environment_is_exactly_the_development_lock():
    installed = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    locked = {name: pin.version for name, pin in read_lock("dev").items()}
    extra = {n: v for n, v in installed.items() if n not in locked and n not in NOT_IN_LOCK}
    missing = {n: v for n, v in locked.items() if n not in installed}
    differ = {n: (installed[n], v) for n, v in locked.items() if n in installed and installed[n] != v}
    assert not extra, f"installed but not in requirements/dev.txt (rebuild with `make install`): {extra}"
    assert not missing, f"in requirements/dev.txt but not installed: {missing}"
    assert not differ, f"installed version differs from the lock (installed, locked): {differ}"


@pytest.mark.parametrize("lock", LOCK_NAMES)
def test_every_pin_carries_sha256_hashes(lock):
    pins = read_lock(lock)
    assert pins, f"requirements/{lock}.txt is empty"
    for pin in pins.values():
        assert pin.hashes, f"{lock}.txt: {pin.name} has no hash"
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in pin.hashes), pin


def test_the_locks_are_one_resolution():
    dev, worker, web = (read_lock(name) for name in LOCK_NAMES)
    # The development lock takes the CPU build of the worker's torch release: same version, local label "+cpu".
    assert Version(dev["torch"].version).local == "cpu"
    assert Version(dev["torch"].version).public == worker["torch"].version
    assert Version(worker["torch"].version).local is None
    for name, pin in worker.items():
        if name != "torch" and name in dev:
            assert dev[name].version == pin.version, f"{name}: dev {dev[name].version}, worker {pin.version}"
    for name, pin in web.items():
        assert name in dev and dev[name].version == pin.version, f"web pins {name}=={pin.version}, dev does not"
    # The web image carries no ML stack.
    assert not {"torch", "triton", "transformers", "safetensors"} & set(web)


@pytest.mark.parametrize(("lock", "extras"), [("dev", ("ml", "dev")), ("worker", ("ml",)), ("web", ())])
def test_each_lock_satisfies_what_pyproject_asks(lock, extras):
    pins = read_lock(lock)
    project = pyproject()
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    environment = {"platform_system": "Linux", "sys_platform": "linux", "python_version": "3.11"}
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        pin = pins.get(canonical(requirement.name))
        assert pin is not None, f"{lock}.txt lacks {requirement.name}"
        assert requirement.specifier.contains(Version(pin.version), prereleases=True), f"{lock}.txt: {pin} vs {text}"


def test_the_supported_python_is_the_one_the_locks_were_made_for():
    # The locks are resolved for CPython 3.11 (Makefile's --python-version); pyproject promises no other.
    assert pyproject()["requires-python"] == "==3.11.*"
    assert "--python-version 3.11" in (ROOT / "Makefile").read_text()


def test_make_installs_only_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    installs = [line.strip() for line in makefile.splitlines() if "pip install" in line or "PIP_INSTALL)" in line]
    assert "$(PIP_INSTALL) -r requirements/dev.txt" in installs
    assert "--require-hashes --no-deps" in makefile
    # The project itself goes in without resolving anything.
    assert "$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e ." in installs
    assert len(installs) == 3, installs  # the PIP_INSTALL definition, the lock, the project
