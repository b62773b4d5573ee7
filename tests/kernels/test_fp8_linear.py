"""fp8 linears: quantization, the CPU emulation path, and converting a model's block linears."""

from __future__ import annotations

import torch
from torch import nn

from turbokernels import fp8_linear, reference
from turbokernels.fp8_linear import FP8_DTYPE, Fp8Linear, convert_linears_to_fp8, quantize_rows_fp8_reference


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


class _Int8Like(nn.Module):
    """The layout of inference.quant.Int8Linear (int8_weight, tile scale, bias)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, s = reference.quantize_int8_blockwise(linear.weight.detach())
        self.register_buffer("int8_weight", q)
        self.register_buffer("scale", s)
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(64, 64)
        self.ffn = nn.Sequential(nn.Linear(64, 160), nn.GELU(), nn.Linear(160, 64))
        self.proj_l = nn.Linear(16, 16)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.head = nn.Linear(64, 8)


def test_row_quantization_scales_each_row_to_the_fp8_range():
    x = torch.randn(5, 300) * torch.tensor([0.01, 1.0, 10.0, 100.0, 1e4])[:, None]
    q, s = quantize_rows_fp8_reference(x)
    assert q.dtype == FP8_DTYPE
    assert torch.allclose(q.float().abs().amax(dim=1), torch.full((5,), 448.0))
    assert _rel(q.float() * s, x) < 0.05


def test_fp8_linear_close_to_the_float_linear():
    torch.manual_seed(0)
    lin = nn.Linear(256, 96)
    x = torch.randn(3, 40, 256)
    fp8 = Fp8Linear.from_linear(lin)
    out = fp8(x)
    assert out.shape == (3, 40, 96)
    err = _rel(out, lin(x))
    assert 1e-3 < err < 0.06  # fp8 noise is there, and bounded


def test_convert_swaps_block_linears_but_not_proj_l_or_outside_blocks():
    torch.manual_seed(1)
    model = _Model()
    model.blocks[1].q = _Int8Like(model.blocks[1].q)
    x = torch.randn(2, 64)
    before = model.blocks[1].ffn(model.blocks[0].q(x))
    assert convert_linears_to_fp8(model) == 6
    # Through the module: the interpreter fixture reloads turbokernels.fp8_linear, which makes a new class object.
    assert isinstance(model.blocks[0].q, fp8_linear.Fp8Linear)
    assert isinstance(model.blocks[1].q, fp8_linear.Fp8Linear)  # from the int8 layout
    assert isinstance(model.blocks[0].ffn[2], fp8_linear.Fp8Linear)
    assert type(model.blocks[0].proj_l) is nn.Linear
    assert type(model.head) is nn.Linear
    after = model.blocks[1].ffn(model.blocks[0].q(x))
    assert _rel(after, before) < 0.08
