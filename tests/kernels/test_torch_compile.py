"""turbokernels.torch_compile: block compilation setup and kernel wrappers opaque to torch.compile."""

from __future__ import annotations

import torch
from torch import nn

from turbokernels import torch_compile


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)])


def test_compile_blocks_compiles_each_block_and_keeps_one_cache_entry_per_block():
    model = _Model()
    assert torch_compile.compile_blocks(model) == 3
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    # 40 blocks of one class must not exhaust Dynamo's per-code cache and fall back to eager.
    assert torch._dynamo.config.cache_size_limit >= 40


def test_opaque_wrapper_still_computes_the_same():
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    wrapped = torch_compile.opaque_to_compile(double)
    x = torch.arange(4.0)
    assert torch.equal(wrapped(x), x * 2)
    assert wrapped is not double
