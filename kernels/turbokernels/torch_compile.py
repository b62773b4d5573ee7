"""torch.compile helpers: compile the DiT blocks so the fp32 residual/gate/cast element-wise work around the
kernels fuses, and keep each kernel launch one opaque call inside compiled code.

The Triton kernels are called through turbokernels.dispatch inside the blocks; each wrapper is marked with
`opaque_to_compile`, so TorchDynamo breaks the graph there and Inductor fuses what lies between. Shapes are static (dynamic=False): a video
size compiles once per process, later jobs of that size reuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable)

# 40 block instances of one class each get their own cache entry; keep them all (defaults are 8 / 256).
_CACHE_LIMIT = 1024


def compile_blocks(model: nn.Module, *, mode: str | None = None, root: str = "blocks") -> int:
    """Compile every module in `model.<root>` in place (nn.Module.compile); returns how many."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, _CACHE_LIMIT)
    torch._dynamo.config.accumulated_cache_size_limit = max(
        torch._dynamo.config.accumulated_cache_size_limit, _CACHE_LIMIT
    )
    blocks = getattr(model, root)
    for block in blocks:
        block.compile(dynamic=False, mode=mode)
    return len(blocks)


def opaque_to_compile(fn: F) -> F:
    """Make a kernel wrapper one opaque call for torch.compile (a graph break): Inductor fuses the work around it.
    Tracing into the Triton launch instead made Inductor re-type the kernels' float arguments (fp64 loop state)."""
    return torch.compiler.disable(fn, recursive=True)
