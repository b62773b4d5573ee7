"""The Triton kernels on a CUDA device against the references (run through the device tool: pytest -m gpu)."""

from __future__ import annotations

import pytest
import torch

from turbokernels import reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


@pytest.fixture(autouse=True)
def _compiled_kernels():
    import os

    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        pytest.fail("GPU kernel tests must run without TRITON_INTERPRET (run them in their own pytest process)")


@pytest.mark.parametrize("length", [4000, 8192])
def test_sla_kernel_matches_reference(length):
    from turbokernels import sla_triton

    gen = torch.Generator(device="cuda").manual_seed(length)
    q, k, v = (torch.randn(1, 4, length, 128, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(3))
    w = torch.randn(128, 128, device="cuda", generator=gen) * 0.05
    b = torch.randn(128, device="cuda", generator=gen) * 0.05
    ref = reference.sla_attention(q, k, v, w, b, 0.1, 128, 64)
    for variant in ({"blocks_per_iter": 1}, {"blocks_per_iter": 2}, {"block_m": 64, "num_warps": 4}):
        out = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64, **variant)
        assert torch.isfinite(out).all()
        assert _cos(out, ref) > 0.9995
        assert _rel(out, ref) < 2e-2



def _model_layout_qkv(length: int, heads: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as the DiT hands them over: (B, H, L, D) views of one fused (B, L, 3, H, D) bf16 projection output."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(1, length, 3, heads, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))


def _proj_l_and_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded proj_l (weight, bias) for the linear branch and the fp32 reference SLA output with it."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(128, 128, device="cuda", generator=gen) * 0.05
    b = torch.randn(128, device="cuda", generator=gen) * 0.05
    return w, b, reference.sla_attention(q, k, v, w, b, 0.1, 128, 64)


# (label, keyword arguments of sla_triton.sla_attention): the variants the sweep (bench/sla_sweep.py) times.
SLA_GPU_VARIANTS = [
    ("tma bpi2", {"sparse_impl": "tma"}),
    ("tma bpi1 s3", {"sparse_impl": "tma", "blocks_per_iter": 1, "num_stages": 3}),
    ("tma bpi2 m64 w4", {"sparse_impl": "tma", "block_m": 64, "num_warps": 4, "num_stages": 3}),
    ("fused side", {"side_impl": "fused"}),
    ("tma + fused side", {"sparse_impl": "tma", "side_impl": "fused"}),
    ("gluon + fused side", {"sparse_impl": "gluon", "side_impl": "fused"}),
]


@pytest.mark.parametrize("length", [4000, 8192])  # 4000: partial last key block (32 of 64); 8192: none
@pytest.mark.parametrize("label,variant", SLA_GPU_VARIANTS, ids=[v[0] for v in SLA_GPU_VARIANTS])
def test_sla_variants_match_reference_and_default(length, label, variant):
    from turbokernels import sla_triton

    q, k, v = _model_layout_qkv(length, 4, length + 7)
    assert sla_triton.tma_supported(q, k, v)  # the fused-qkv views take the TMA kernel, not the fallback
    w, b, ref = _proj_l_and_reference(q, k, v, 5)
    default = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64)
    out = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64, **variant)
    assert torch.isfinite(out).all()
    max_err = (out.float() - ref.float()).abs().max().item()
    print(f"{label} L={length}: cos {_cos(out, ref):.7f} rel {_rel(out, ref):.2e} max {max_err:.2e}")
    assert _cos(out, ref) > 0.9995
    assert _rel(out, ref) < 2e-2
    assert max_err < 2e-2 * ref.float().abs().max().item()
    assert _rel(out, default) < 1e-2  # the same op as the default kernel, up to bf16 rounding


@pytest.mark.parametrize("length", [4000, 5000, 8192])  # 5000: an odd number of chosen blocks (7) and a partial one
def test_sla_gluon_kernel_matches_reference(length):
    """The Gluon (wgmma-pipelined) sparse kernel really runs on the H100 (no fallback) and holds the same bounds."""
    from turbokernels import sla_triton

    q, k, v = _model_layout_qkv(length, 4, length + 11)
    assert sla_triton.gluon_supported(q, k, v, 128, 64)
    w, b, ref = _proj_l_and_reference(q, k, v, 6)
    tma = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64, sparse_impl="tma")
    out = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64, sparse_impl="gluon")
    assert sla_triton._gluon_disabled is None  # the Gluon kernel built and ran: no fallback to the TMA kernel
    max_err = (out.float() - ref.float()).abs().max().item()
    print(f"gluon L={length}: cos {_cos(out, ref):.7f} rel {_rel(out, ref):.2e} max {max_err:.2e}")
    assert _cos(out, ref) > 0.9995
    assert _rel(out, ref) < 2e-2
    assert max_err < 2e-2 * ref.float().abs().max().item()
    assert _rel(out, tma) < 1e-2


def test_sla_gluon_on_contiguous_heads():
    """Heads one after another (B=2, contiguous (B, H, L, D)): the other descriptor layout."""
    from turbokernels import sla_triton

    gen = torch.Generator(device="cuda").manual_seed(10)
    q, k, v = (torch.randn(2, 3, 4000, 128, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(3))
    w = torch.randn(128, 128, device="cuda", generator=gen) * 0.05
    b = torch.randn(128, device="cuda", generator=gen) * 0.05
    assert sla_triton.gluon_supported(q, k, v, 128, 64)
    ref = reference.sla_attention(q, k, v, w, b, 0.1, 128, 64)
    out = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64, sparse_impl="gluon")
    assert _cos(out, ref) > 0.9995
    assert _rel(out, ref) < 2e-2


@pytest.mark.parametrize("blocks_per_iter", [1, 2])
def test_sla_tma_on_contiguous_heads(blocks_per_iter):
    """The other descriptor layout: separate contiguous (B, H, L, D) tensors, B=2 (heads one after another)."""
    from turbokernels import sla_triton

    gen = torch.Generator(device="cuda").manual_seed(9)
    q, k, v = (torch.randn(2, 3, 4000, 128, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(3))
    w = torch.randn(128, 128, device="cuda", generator=gen) * 0.05
    b = torch.randn(128, device="cuda", generator=gen) * 0.05
    assert sla_triton.tma_supported(q, k, v)
    ref = reference.sla_attention(q, k, v, w, b, 0.1, 128, 64)
    out = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64, sparse_impl="tma", blocks_per_iter=blocks_per_iter)
    assert _cos(out, ref) > 0.9995
    assert _rel(out, ref) < 2e-2


def _assert_8bit_bounds(label: str, out: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor) -> None:
    """The bar for SLA's approximate 8-bit products: finite, cosine >= 0.999 and relative error < 4% against the
    fp32 reference, largest error under 10% of its largest value, and not the exact kernel's output (the 8-bit
    product really ran)."""
    assert torch.isfinite(out).all()
    max_err = (out.float() - ref.float()).abs().max().item()
    print(f"{label}: cos {_cos(out, ref):.7f} rel {_rel(out, ref):.2e} max {max_err:.2e}")
    assert _cos(out, ref) >= 0.999
    assert _rel(out, ref) < 4e-2
    assert max_err < 0.1 * ref.float().abs().max().item()
    assert _rel(out, exact) > 1e-4


@pytest.mark.parametrize("length", [4000, 5000, 8192])
@pytest.mark.parametrize("side_impl", ["fused", "separate"])
def test_sla_gluon_fp8_pv_within_approximation_bounds(length, side_impl):
    """fp8 P.V (P times 2^8 and V per channel in e4m3, TurboDiffusion's SageSLA choice) is approximate: cosine
    >= 0.999 against the fp32 reference, relative error within 4%, and close to the exact bf16 Gluon kernel."""
    from turbokernels import sla_triton

    q, k, v = _model_layout_qkv(length, 4, length + 17)
    w, b, ref = _proj_l_and_reference(q, k, v, 6)
    exact = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64, sparse_impl="gluon", side_impl=side_impl)
    out = sla_triton.sla_attention(q, k, v, w, b, 0.1, 128, 64, sparse_impl="gluon", side_impl=side_impl,
                                   pv_fp8=True)
    assert sla_triton._gluon_disabled is None
    _assert_8bit_bounds(f"gluon fp8 P.V {side_impl} L={length}", out, ref, exact)
    assert _rel(out, exact) < 4e-2


def test_linear_kv_pool_matches_separate_passes():
    from turbokernels import sla_triton

    _q, k, v = _model_layout_qkv(4000, 4, 12)
    kv, ksum, pooled, _ = sla_triton.linear_kv_pool(k, v, 64)
    kv_ref, ksum_ref = sla_triton.linear_kv(k, v)
    assert _rel(kv, kv_ref) < 5e-3  # phi rounded to bf16 for the product (fp32 accumulation) vs tf32 there
    assert _rel(ksum, ksum_ref) < 1e-5
    assert _rel(pooled, sla_triton.block_means(k, 64)) < 1e-5

def test_int8_linear_kernel_matches_reference():
    from turbokernels import int8_linear

    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(3000, 1024, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = torch.randn(1536, 1024, device="cuda", generator=gen) * 0.02
    bias = torch.randn(1536, device="cuda", generator=gen, dtype=torch.bfloat16)
    qw, sw = int8_linear.quantize_int8_blockwise(w)
    qw_ref, sw_ref = reference.quantize_int8_blockwise(w)
    assert torch.equal(qw, qw_ref)
    assert torch.equal(sw, sw_ref)
    ref = reference.int8_linear(x, qw, sw, bias)
    errors = {}
    for i, cfg in enumerate(int8_linear.GEMM_CONFIGS):
        out = int8_linear.int8_gemm(*int8_linear.quantize_int8_blockwise(x), qw, sw, bias, torch.bfloat16, cfg)
        errors[i] = _rel(out, ref)
    print("int8 GEMM rel err per config:", errors)
    assert all(e < 5e-3 for e in errors.values()), errors


def test_norm_kernels_match_reference():
    from turbokernels import norms_triton

    gen = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(1, 3000, 5120, device="cuda", generator=gen) * 2 + 0.5
    shift = torch.randn(1, 1, 5120, device="cuda", generator=gen)
    scale = torch.randn(1, 1, 5120, device="cuda", generator=gen) * 0.2
    out = norms_triton.layer_norm_modulate(x, shift, scale, 1e-6, out_dtype=torch.bfloat16)
    assert _rel(out, reference.layer_norm_modulate(x, shift, scale, 1e-6)) < 5e-3
    xb = x.bfloat16()
    w = torch.rand(5120, device="cuda", generator=gen) + 0.5
    assert _rel(norms_triton.rms_norm(xb, w, 1e-6), reference.rms_norm(xb, w, 1e-6)) < 5e-3
    cos, sin = reference.rope_tables((3, 20, 50), 128, 10000.0)
    cos, sin = cos.cuda(), sin.cuda()
    xh = xb.view(1, 3000, 40, 128)
    assert _rel(norms_triton.apply_rope(xh, cos, sin), reference.apply_rope(xh, cos, sin)) < 5e-3
    fused = norms_triton.rms_norm_rope(xb, w, 1e-6, cos, sin, 40)
    composed = reference.apply_rope(reference.rms_norm(xb, w, 1e-6).view(1, 3000, 40, 128), cos, sin)
    assert _rel(fused, composed) < 5e-3


def test_fp8_linear_error_and_quantizer():
    from turbokernels import fp8_linear

    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(2, 1000, 2048, device="cuda", generator=gen, dtype=torch.bfloat16)
    q, s = fp8_linear.quantize_rows_fp8(x.view(-1, 2048))
    q_ref, s_ref = fp8_linear.quantize_rows_fp8_reference(x.view(-1, 2048))
    assert torch.allclose(s, s_ref)
    assert _rel(q.float() * s, q_ref.float() * s_ref) < 1e-3
    lin = torch.nn.Linear(2048, 3072, device="cuda", dtype=torch.bfloat16)
    fp8 = fp8_linear.Fp8Linear.from_linear(lin)
    assert _rel(fp8(x), lin(x)) < 0.05


def test_dispatch_auto_routes_cuda_to_kernels():
    from turbokernels import dispatch

    dispatch.set_backend("auto")
    try:
        x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
        assert dispatch._pick("rms_norm", x, x, torch.ones(256, device="cuda"), 1e-6).__module__ == "turbokernels.norms_triton"
        q = torch.randn(1, 2, 300, 128, device="cuda", dtype=torch.bfloat16)
        w = torch.eye(128, device="cuda")
        args = (q, q, q, w, torch.zeros(128, device="cuda"), 0.1, 128, 64)
        assert dispatch._pick("sla_attention", q, *args).__module__ == "turbokernels.sla_triton"
        assert _cos(dispatch.sla_attention(*args), reference.sla_attention(*args)) > 0.999
    finally:
        dispatch.set_backend(None)
