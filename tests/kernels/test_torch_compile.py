"""turbokernels.torch_compile: kernel wrappers opaque to torch.compile."""

from __future__ import annotations

import torch

from turbokernels import torch_compile


def test_opaque_wrapper_still_computes_the_same():
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    wrapped = torch_compile.opaque_to_compile(double)
    x = torch.arange(4.0)
    assert torch.equal(wrapped(x), x * 2)
    assert wrapped is not double
