"""Our import names are ours alone: no dependency may ship a top-level module of the same name, and the folder
kernels/ (the agreed layout) is not itself importable as `kernels`, which Hugging Face's package owns."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from tests.project.lockfile import ROOT

OUR_PACKAGES = ("turbosite", "generation", "inference", "turbokernels")


def test_our_top_level_packages_are_the_ones_on_disk():
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {
        p.parent.name for p in (ROOT / "kernels").glob("*/__init__.py")}
    assert on_disk - {"tests", "bench"} == set(OUR_PACKAGES)


def test_no_dependency_ships_a_module_under_one_of_our_names():
    owners = importlib.metadata.packages_distributions()
    for name in OUR_PACKAGES:
        others = set(owners.get(name, [])) - {"turbosite"}
        assert not others, f"import name {name!r} is also shipped by {others}"


def test_the_kernels_folder_holds_no_module_of_its_own():
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert not list((ROOT / "kernels").glob("*.py")), "modules belong in kernels/turbokernels/"


def test_from_the_repository_root_kernels_is_hugging_faces_package():
    # The bug this guards against: our kernels/ shadowed Hugging Face's `kernels`, which transformers imports.
    assert importlib.metadata.version("kernels")  # the lock installs it (transformers depends on it)
    code = ("import kernels, turbokernels, transformers; "
            "from transformers import UMT5EncoderModel; "
            "print(kernels.__file__); print(turbokernels.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    hf_kernels, ours = done.stdout.split()
    assert "site-packages" in hf_kernels and not hf_kernels.startswith(str(ROOT / "kernels"))
    assert ours == str(ROOT / "kernels" / "turbokernels" / "__init__.py")
