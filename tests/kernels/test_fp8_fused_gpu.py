"""The fused fp8 path on a CUDA device (run through the device tool: pytest -m gpu): the quantizing kernels give
the reference's fp8 codes, and a full-size A14B block with the fusions stays as close to bf16 as the unfused path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _compiled_kernels():
    import os

    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        pytest.fail("GPU kernel tests must run without TRITON_INTERPRET (run them in their own pytest process)")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _code_mismatch(q: torch.Tensor, q_ref: torch.Tensor) -> tuple[float, int]:
    """(fraction of differing fp8 codes, largest code distance)."""
    diff = (q.view(torch.uint8).int() - q_ref.view(torch.uint8).int()).abs()
    return (diff > 0).float().mean().item(), int(diff.max().item())


@pytest.mark.parametrize("cols", [5120, 13824, 20000])
def test_row_quantizer_gives_the_reference_codes(cols):
    from turbokernels import fp8_linear

    gen = torch.Generator(device="cuda").manual_seed(cols)
    x = torch.randn(1000, cols, device="cuda", generator=gen, dtype=torch.bfloat16) * 3
    q, s = fp8_linear.quantize_rows_fp8(x)
    q_ref, s_ref = fp8_linear.quantize_rows_fp8_reference(x)
    assert torch.allclose(s, s_ref, rtol=1e-6, atol=0)
    fraction, worst = _code_mismatch(q, q_ref)
    assert fraction < 1e-4 and worst <= 1  # x / scale vs x * (1 / scale): an fp32 ulp at a rounding boundary


def test_gelu_quantizer_gives_the_reference_codes():
    from turbokernels import fp8_linear

    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(2000, 13824, device="cuda", generator=gen, dtype=torch.bfloat16) * 3
    q, s = fp8_linear.quantize_rows_fp8(x, gelu=True)
    q_ref, s_ref = fp8_linear.quantize_rows_fp8_reference(x, gelu=True)
    assert torch.allclose(s, s_ref, rtol=1e-5, atol=0)
    fraction, worst = _code_mismatch(q, q_ref)
    assert fraction < 1e-3 and worst <= 1  # our tanh and torch's differ by fp32 ulps


def test_layer_norm_modulate_fp8_gives_the_reference_codes():
    from turbokernels import dispatch, norms_triton

    gen = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(1, 4096, 5120, device="cuda", generator=gen) * 2 + 0.5
    shift = torch.randn(1, 1, 5120, device="cuda", generator=gen) * 0.1
    scale = torch.randn(1, 1, 5120, device="cuda", generator=gen) * 0.1
    q, s = norms_triton.layer_norm_modulate_fp8(x, shift, scale, 1e-6)
    q_ref, s_ref = dispatch.layer_norm_modulate_fp8_reference(x, shift, scale, 1e-6)
    assert torch.allclose(s, s_ref, rtol=1e-5, atol=0)
    fraction, worst = _code_mismatch(q, q_ref)
    assert fraction < 1e-3 and worst <= 1  # fp32 mean/variance summed in another order


def test_full_size_block_fused_fp8_is_as_close_to_bf16_as_unfused():
    from inference.configs import A14B
    from inference.dit import WanDiT

    cfg = replace(A14B.dit, num_layers=1)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            dit = WanDiT(cfg, attention="sla").eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        dit.blocks[0].modulation.normal_(std=0.1)
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, 36, 5, 64, 64, device="cuda", generator=gen)  # 3 x 32 x 32 = 3072 tokens
    t = torch.tensor([900.0], device="cuda")
    context = torch.randn(1, 512, 4096, device="cuda", generator=gen, dtype=torch.bfloat16)
    with torch.inference_mode():
        bf16 = dit(x, t, context)
        dit.use_fp8_linears(fuse=False)
        unfused = dit(x, t, context)
        dit.use_fp8_linears()
        fused = dit(x, t, context)
    err_unfused, err_fused = _rel(unfused, bf16), _rel(fused, bf16)
    print(f"block vs bf16: unfused fp8 {err_unfused:.4f}, fused fp8 {err_fused:.4f}")
    assert torch.isfinite(fused).all()
    assert err_fused < 0.05
    assert err_fused < 1.1 * err_unfused + 2e-3  # the fusions must not cost accuracy


def test_residual_norm_kernels_match_reference():
    from turbokernels import dispatch, norms_triton

    gen = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(1, 4096, 5120, device="cuda", generator=gen) * 2
    y = torch.randn(1, 4096, 5120, device="cuda", generator=gen, dtype=torch.bfloat16)
    gate = torch.randn(1, 1, 5120, device="cuda", generator=gen)
    shift, scale = (torch.randn(1, 1, 5120, device="cuda", generator=gen) * 0.1 for _ in range(2))
    x_new, out, _ = norms_triton.residual_layer_norm_modulate(x, y, gate, shift, scale, 1e-6, torch.bfloat16)
    x_ref, out_ref, _ = dispatch.residual_layer_norm_modulate_reference(
        x, y, gate, shift, scale, 1e-6, torch.bfloat16
    )
    assert _rel(x_new, x_ref) < 1e-6  # an FMA instead of a multiply then add
    assert _rel(out, out_ref) < 5e-3  # bf16 rounding of the same fp32 values
    _, q, s = norms_triton.residual_layer_norm_modulate(x, y, None, shift, scale, 1e-6, torch.float8_e4m3fn)
    _, q_ref, s_ref = dispatch.residual_layer_norm_modulate_reference(
        x, y, None, shift, scale, 1e-6, torch.float8_e4m3fn
    )
    assert torch.allclose(s, s_ref, rtol=1e-5, atol=0)
    fraction, worst = _code_mismatch(q, q_ref)
    assert fraction < 1e-3 and worst <= 1
    assert _rel(norms_triton.gated_residual(x, y, gate), x_ref) < 1e-6
