"""Kernel tests: on CPU the Triton kernels run under Triton's interpreter (TRITON_INTERPRET=1)."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

# Set at collection time too, before anything in this directory can import Triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

KERNEL_MODULES = ("turbokernels.sla_triton", "turbokernels.int8_linear", "turbokernels.norms_triton", "turbokernels.fp8_linear")


@pytest.fixture(scope="session")
def interpreted_kernels():
    """The kernel modules with their @triton.jit functions built for the interpreter (decided at decoration time,
    so modules imported earlier in the session are reloaded)."""
    # Set before Triton's first import: its own library functions (tl.sum...) are decorated at import time too.
    os.environ["TRITON_INTERPRET"] = "1"
    pytest.importorskip("triton")
    modules = {}
    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        modules[name.rsplit(".", 1)[1]] = importlib.reload(module)
    return modules


@pytest.fixture
def kernel_backend():
    from turbokernels import dispatch

    dispatch.set_backend("kernel")
    yield dispatch
    dispatch.set_backend(None)


def cuda_required() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
