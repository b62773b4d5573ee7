"""The web side runs without the ML stack: every module of turbosite and generation (except the GPU worker's own
modules) imports, and Django starts, in a process where importing torch, triton, transformers, inference or
turbokernels fails. The web Docker image installs no torch, so this is what it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.architecture.imports import GPU_STACK, REPO, WORKER_SIDE, is_web_module, module_files

CHILD = """
import importlib, importlib.abc, json, sys

BLOCKED = set(sys.argv[1].split(","))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed in the web image")
        return None

sys.meta_path.insert(0, Blocker())
try:
    import torch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True

import django
django.setup()
failed = {}
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"blocked": blocked, "failed": failed, "loaded": loaded}))
"""


def _web_modules() -> list[str]:
    return sorted(name for name in module_files() if is_web_module(name))


def test_every_web_module_imports_without_the_ml_stack():
    modules = _web_modules()
    assert "generation.models_catalog" in modules and "turbosite.urls" in modules
    assert not (set(modules) & WORKER_SIDE)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "turbosite.settings", "REDIS_URL": os.environ.get("REDIS_URL", "")}
    done = subprocess.run([sys.executable, "-c", CHILD, ",".join(GPU_STACK), ",".join(modules)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["blocked"] is True  # the blocker works: torch really cannot be imported there
    assert result["failed"] == {}
    assert result["loaded"] == []


def test_the_blocker_would_catch_a_web_module_that_imports_the_gpu_stack():
    done = subprocess.run([sys.executable, "-c", CHILD, ",".join(GPU_STACK), "generation.actors"], cwd=REPO,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "turbosite.settings"},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "not installed in the web image" in result["failed"]["generation.actors"]
