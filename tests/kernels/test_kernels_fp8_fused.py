"""The fused fp8 path of the DiT blocks: quantizing inside the LayerNorm and GELU kernels, one q/k/v GEMM.

Kernels run under Triton's interpreter on CPU; the block-level tests use the tiny model on CPU, where Fp8Linear
computes the same quantized numbers in fp32.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference.configs import TINY
from inference.dit import WanDiT
from turbokernels import dispatch, reference
from turbokernels.fp8_linear import (
    FP8_DTYPE,
    Fp8Linear,
    fuse_fp8_linears,
    quantize_activation,
    quantize_rows_fp8,
    quantize_rows_fp8_reference,
    split_fp8_linear,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _dequant(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.float() * s


def _assert_same_quantization(q, s, q_ref, s_ref) -> None:
    """Same scales (fp32 rounding apart) and the same fp8 codes, but for two kinds of difference:
    - one code apart on under 1% of elements: a value at a rounding boundary (fp32 ulps of the math before it);
    - one code apart among fp8 subnormals (|code value| < 2^-6), which the interpreter rounds toward zero;
    - exactly half a power-of-two reference value: Triton's interpreter (not the GPU) drops the carry when
      rounding up crosses into the next binade (1.95 becomes 1.0, not 2.0); the GPU test checks exact codes."""
    assert q.dtype == FP8_DTYPE and s.shape == s_ref.shape
    assert torch.allclose(s, s_ref, rtol=1e-5, atol=0)
    got, want = q.float(), q_ref.float()
    codes = q.view(torch.uint8).int() - q_ref.view(torch.uint8).int()
    one_apart = codes.abs() == 1
    lost_carry = (want.abs() == 2.0 ** torch.log2(want.abs()).round()) & (got == want / 2)
    assert ((got == want) | one_apart | lost_carry).all()
    subnormal = torch.maximum(got.abs(), want.abs()) < 2.0**-6
    assert (one_apart & ~subnormal).float().mean().item() < 0.01


@pytest.mark.parametrize("cols", [96, 5120, 13824, 20000])
def test_row_quantizer_kernel_matches_reference(interpreted_kernels, cols):
    fp8 = interpreted_kernels["fp8_linear"]
    gen = torch.Generator().manual_seed(cols)
    rows = 3 if cols > 1000 else 17
    x = torch.randn(rows, cols, generator=gen) * torch.logspace(-2, 3, rows)[:, None]
    x[0] = 0.0  # an all-zero row must give finite scales and zeros
    q, s = fp8.launch_quantize_rows(x)  # 20000 > one-pass width: the two-pass kernel
    q_ref, s_ref = quantize_rows_fp8_reference(x)
    _assert_same_quantization(q, s, q_ref, s_ref)
    assert torch.equal(q[0].float(), torch.zeros(cols))


def test_gelu_quantizer_kernel_matches_reference(interpreted_kernels):
    fp8 = interpreted_kernels["fp8_linear"]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 1000, generator=gen) * 4
    x[1, :4] = torch.tensor([60.0, -60.0, 1e4, -1e4])  # the tanh tails must not overflow into NaN
    q, s = fp8.launch_quantize_rows(x.to(torch.bfloat16), gelu=True)
    q_ref, s_ref = quantize_rows_fp8_reference(x.to(torch.bfloat16), gelu=True)
    _assert_same_quantization(q, s, q_ref, s_ref)
    assert torch.isfinite(_dequant(q, s)).all()
    # The reference itself is GELU(tanh) then quantization.
    assert _rel(_dequant(q_ref, s_ref), nn.functional.gelu(x.to(torch.bfloat16).float(), approximate="tanh")) < 0.05


def test_gelu_quantizer_refuses_rows_it_cannot_hold(interpreted_kernels):
    fp8 = interpreted_kernels["fp8_linear"]
    with pytest.raises(ValueError, match="up to 16384"):
        fp8.launch_quantize_rows(torch.randn(2, 20000), gelu=True)
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows_fp8(torch.randn(2, 3, 4), gelu=True)


def test_layer_norm_modulate_fp8_kernel_matches_reference(interpreted_kernels):
    norms = interpreted_kernels["norms_triton"]
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 7, 160, generator=gen) * 3 + 1
    shift = torch.randn(2, 1, 160, generator=gen)
    scale = torch.randn(2, 1, 160, generator=gen) * 0.1
    q, s = norms.layer_norm_modulate_fp8(x, shift, scale, 1e-6)
    q_ref, s_ref = dispatch.layer_norm_modulate_fp8_reference(x, shift, scale, 1e-6)
    assert q.shape == (14, 160) and s.shape == (14, 1)
    _assert_same_quantization(q, s, q_ref, s_ref)
    exact = reference.layer_norm_modulate(x, shift, scale, 1e-6).reshape(14, 160)
    # fp8 noise only (the interpreter's casts round toward zero, so looser than the GPU's ~3%).
    assert _rel(_dequant(q, s), exact) < 0.08


def test_layer_norm_modulate_fp8_dispatch_gives_rows_for_a_linear(kernel_backend, interpreted_kernels):
    x = torch.randn(1, 6, 64)
    rows = kernel_backend.layer_norm_modulate_fp8(x, torch.zeros(64), torch.zeros(64), 1e-6, torch.bfloat16)
    assert rows.shape == (1, 6, 64) and rows.dtype == torch.bfloat16
    exact = reference.layer_norm_modulate(x, torch.zeros(64), torch.zeros(64), 1e-6)
    assert _rel(rows.dequantize(), exact) < 0.08  # fp8 noise, the interpreter's round-toward-zero casts
    with pytest.raises(ValueError, match=r"\(B, L, C\)"):
        kernel_backend.layer_norm_modulate_fp8(x[0], torch.zeros(64), torch.zeros(64), 1e-6, torch.bfloat16)


def test_fused_linears_equal_the_separate_ones_and_split_back_exactly():
    torch.manual_seed(0)
    parts = [Fp8Linear.from_linear(nn.Linear(64, n)) for n in (64, 32, 48)]
    x = torch.randn(2, 5, 64)
    separate = [part(x) for part in parts]
    fused = fuse_fp8_linears(parts)
    assert (fused.in_features, fused.out_features) == (64, 144)
    assert torch.equal(fused(x), torch.cat(separate, dim=-1))
    rows = quantize_activation(x)  # one quantization serves the fused layer as it would each part
    assert torch.equal(fused(rows), torch.cat(separate, dim=-1))
    again = split_fp8_linear(fused, [64, 32, 48])
    for part, expected in zip(again, separate, strict=True):
        assert torch.equal(part(x), expected)
        assert part.weight_fp8.untyped_storage().data_ptr() != fused.weight_fp8.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="add up"):
        split_fp8_linear(fused, [64, 64])


def test_fusing_linears_of_different_inputs_is_refused():
    a, b = Fp8Linear.from_linear(nn.Linear(64, 8)), Fp8Linear.from_linear(nn.Linear(32, 8))
    with pytest.raises(ValueError, match="in_features"):
        fuse_fp8_linears([a, b])
    c = Fp8Linear.from_linear(nn.Linear(64, 8, bias=False))
    with pytest.raises(ValueError, match="bias"):
        fuse_fp8_linears([a, c])


def _tiny_inputs(cfg, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 5, 8, 8, generator=gen)
    t = torch.tensor([900.0])
    context = torch.randn(1, 12, cfg.text_dim, generator=gen)
    return x, t, context


def _buffer_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _tiny_dit() -> WanDiT:
    torch.manual_seed(0)
    dit = WanDiT(TINY.dit, attention="dense").eval().requires_grad_(False)
    with torch.no_grad():
        for block in dit.blocks:  # non-zero modulation, so shifts and gates matter
            block.modulation.normal_(std=0.1)
    return dit


def test_fused_fp8_blocks_match_the_unfused_fp8_path_and_the_float_model():
    x, t, context = _tiny_inputs(TINY.dit)
    dit = _tiny_dit()
    calls = {"qkv": 0}
    with torch.inference_mode():
        exact = dit(x, t, context)
        converted = dit.use_fp8_linears(fuse=False)
        unfused = dit(x, t, context)
        weight_bytes = _buffer_bytes(dit)
        assert dit.use_fp8_linears() == 0  # already fp8: only the fusion is new
        for block in dit.blocks:
            block.self_attn.qkv.register_forward_hook(lambda *_: calls.__setitem__("qkv", calls["qkv"] + 1))
        fused = dit(x, t, context)
    per_block = 6 + 2 + 2  # self q,k,v,o; cross q,k,v,o; ffn up, down
    assert converted == per_block * TINY.dit.num_layers
    assert calls == {"qkv": TINY.dit.num_layers}
    # The separate q/k/v are gone: the weights are held once (an offloading memory policy copies every buffer).
    assert all(b.self_attn.q is None and b.self_attn.v is None for b in dit.blocks)
    assert _buffer_bytes(dit) == weight_bytes
    # The tiny model computes in fp32 on CPU, where quantizing inside the norm/GELU sees the same fp32 values
    # as quantizing their outputs: the fused path must give the unfused numbers.
    assert _rel(fused, unfused) < 1e-5
    assert 1e-3 < _rel(fused, exact) < 0.1  # fp8 noise is there, and bounded


def test_fused_fp8_block_in_bf16_stays_close_to_the_unfused_path():
    x, t, context = _tiny_inputs(TINY.dit, seed=2)
    dit = _tiny_dit().to(torch.bfloat16)
    with torch.inference_mode():
        exact = dit(x, t, context.to(torch.bfloat16))
        dit.use_fp8_linears(fuse=False)
        unfused = dit(x, t, context.to(torch.bfloat16))
        dit.use_fp8_linears()
        fused = dit(x, t, context.to(torch.bfloat16))
    # bf16: the unfused path rounds the norm output and the GELU output to bf16 before quantizing.
    assert 0 < _rel(fused, unfused) < 0.05
    assert _rel(fused, exact) < 0.1


def test_unfusing_goes_back_to_per_linear_quantization():
    x, t, context = _tiny_inputs(TINY.dit, seed=1)
    dit = _tiny_dit()
    with torch.inference_mode():
        dit.use_fp8_linears(fuse=False)
        before = dit(x, t, context)
        dit.use_fp8_linears()
        dit.use_fp8_linears(fuse=False)
        after = dit(x, t, context)
    assert all(not block.fp8_inputs and block.self_attn.qkv is None for block in dit.blocks)
    assert torch.equal(before, after)


@pytest.mark.parametrize("gated", [True, False])
def test_residual_norm_kernel_matches_reference(interpreted_kernels, gated):
    norms = interpreted_kernels["norms_triton"]
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 7, 160, generator=gen) * 3
    y = torch.randn(2, 7, 160, generator=gen).to(torch.bfloat16)
    gate = torch.randn(2, 1, 160, generator=gen) if gated else None
    shift, scale = torch.randn(2, 1, 160, generator=gen), torch.randn(2, 1, 160, generator=gen) * 0.1
    x_before = x.clone()
    x_new, out, row_scale = norms.residual_layer_norm_modulate(x, y, gate, shift, scale, 1e-6, torch.bfloat16)
    x_ref, out_ref, _ = dispatch.residual_layer_norm_modulate_reference(x, y, gate, shift, scale, 1e-6, torch.bfloat16)
    assert row_scale is None and out.dtype == torch.bfloat16
    assert _rel(x_new, x_ref) < 1e-6
    assert _rel(out, out_ref) < 1e-2
    x_new8, q, s = norms.residual_layer_norm_modulate(x, y, gate, shift, scale, 1e-6, FP8_DTYPE)
    _, q_ref, s_ref = dispatch.residual_layer_norm_modulate_reference(x, y, gate, shift, scale, 1e-6, FP8_DTYPE)
    assert torch.equal(x_new8, x_new)
    _assert_same_quantization(q, s, q_ref, s_ref)
    assert torch.equal(norms.gated_residual(x, y, gate), x_new)
    assert torch.equal(x, x_before)  # the stream is not updated in place
    assert _rel(x_ref, x + (y.float() * gate if gated else y.float())) == 0


def test_residual_norm_dispatch_checks_shapes(kernel_backend, interpreted_kernels):
    x = torch.randn(1, 4, 32)
    with pytest.raises(RuntimeError, match="must have x's shape"):
        kernel_backend.gated_residual(x, torch.randn(1, 5, 32), None)
    with pytest.raises(RuntimeError, match="does not broadcast"):
        kernel_backend.gated_residual(x, torch.randn(1, 4, 32), torch.randn(1, 1, 7))
    x_new, rows = kernel_backend.residual_norm(
        x, torch.ones(1, 4, 32), None, torch.zeros(32), torch.zeros(32), 1e-6, torch.bfloat16, fp8=True
    )
    assert torch.allclose(x_new, x + 1)
    assert rows.shape == (1, 4, 32) and rows.dtype == torch.bfloat16
