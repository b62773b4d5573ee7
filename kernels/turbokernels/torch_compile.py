"""Kernel wrappers as opaque calls for torch.compile, for anyone who compiles a model that calls them.

The pipeline itself no longer compiles its blocks (the `TURBO_COMPILE` option measured no faster once the
element-wise work moved into our kernels, bench/README.md, and was removed); the marker stays so a compiled caller
breaks the graph at each kernel instead of tracing into the Triton launch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def opaque_to_compile(fn: F) -> F:
    """Make a kernel wrapper one opaque call for torch.compile (a graph break): Inductor fuses the work around it.
    Tracing into the Triton launch instead made Inductor re-type the kernels' float arguments (fp64 loop state)."""
    return torch.compiler.disable(fn, recursive=True)
