"""torch.compile over the DiT blocks: fuses the fp32 residual/gate/cast element-wise work around the kernels.

The Triton kernels are called through kernels.dispatch inside the blocks; TorchDynamo either traces their launches
or breaks the graph around them, and Inductor fuses what lies between. Shapes are static (dynamic=False): a video
size compiles once per process, later jobs of that size reuse it.
"""

from __future__ import annotations

from torch import nn

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
