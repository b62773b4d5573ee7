"""The pure-PyTorch reference ops against independent, deliberately naive formulations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from turbokernels import reference


def _qkv(length: int, heads: int = 2, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, heads, length, dim, generator=g) for _ in range(3))


def _naive_sla(q, k, v, w, b, topk, block_q, block_k):
    """SLA written token by token from spec section 3, loops and slices only."""
    _, heads, length, dim = q.shape
    q_blocks = [(s, min(s + block_q, length)) for s in range(0, length, block_q)]
    k_blocks = [(s, min(s + block_k, length)) for s in range(0, length, block_k)]
    keep = max(1, int(topk * len(k_blocks)))
    out = torch.zeros_like(q)
    for h in range(heads):
        qh, kh, vh = q[0, h], k[0, h], v[0, h]
        k_centered = kh - kh.mean(dim=0)
        pooled_k = torch.stack([k_centered[s:e].mean(dim=0) for s, e in k_blocks])
        # linear branch
        phi_q, phi_k = torch.softmax(qh, dim=-1), torch.softmax(kh, dim=-1)
        lin = torch.stack([(phi_q[i] @ (phi_k.T @ vh)) / (1e-5 + phi_q[i] @ phi_k.sum(dim=0)) for i in range(length)])
        lin = lin @ w.T + b
        for s, e in q_blocks:
            scores = pooled_k @ qh[s:e].mean(dim=0)
            chosen = torch.topk(scores, keep).indices.tolist()
            keys = torch.cat([torch.arange(*k_blocks[j]) for j in chosen])
            att = torch.softmax(qh[s:e] @ kh[keys].T / math.sqrt(dim), dim=-1)
            out[0, h, s:e] = att @ vh[keys] + lin[s:e]
    return out


@pytest.mark.parametrize("length", [64, 70, 37])
def test_sla_topk_one_with_zero_proj_l_equals_dense(length: int) -> None:
    q, k, v = _qkv(length)
    zero_w, zero_b = torch.zeros(16, 16), torch.zeros(16)
    sla = reference.sla_attention(q, k, v, zero_w, zero_b, 1.0, 32, 16)
    linear_only = reference._linear_attention(q, k, v)  # proj_l = 0 removes it whatever its value
    assert linear_only.abs().sum() > 0
    # Same math in fp32, only the summation order differs.
    torch.testing.assert_close(sla, reference.dense_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("length", "topk", "block_q", "block_k"), [(64, 0.25, 16, 8), (37, 0.3, 16, 8), (50, 0.05, 8, 16)]
)
def test_sla_matches_naive_definition_including_partial_blocks(length, topk, block_q, block_k) -> None:
    q, k, v = _qkv(length, seed=length)
    g = torch.Generator().manual_seed(1)
    w, b = 0.3 * torch.randn(16, 16, generator=g), 0.1 * torch.randn(16, generator=g)
    got = reference.sla_attention(q, k, v, w, b, topk, block_q, block_k)
    assert got.shape == q.shape
    torch.testing.assert_close(got, _naive_sla(q, k, v, w, b, topk, block_q, block_k), atol=1e-5, rtol=1e-4)


def test_sla_is_sparse_below_topk_one() -> None:
    q, k, v = _qkv(96)
    zero_w, zero_b = torch.zeros(16, 16), torch.zeros(16)
    block_map = reference.sla_block_map(q, k, 0.25, 32, 16)
    assert block_map.shape == (1, 2, 3, 6)
    assert (block_map.sum(dim=-1) == 1).all()  # max(1, int(0.25 * 6)) = 1
    assert (reference.sla_block_map(q, k, 0.01, 32, 16).sum(dim=-1) == 1).all()  # never zero blocks
    sparse = reference.sla_attention(q, k, v, zero_w, zero_b, 0.25, 32, 16)
    assert (sparse - reference.dense_attention(q, k, v)).abs().max() > 1e-2


def test_sla_returns_input_dtype() -> None:
    q, k, v = (t.bfloat16() for t in _qkv(40))
    out = reference.sla_attention(q, k, v, torch.zeros(16, 16), torch.zeros(16), 0.5, 16, 16)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_dense_attention_is_softmax_attention() -> None:
    q, k, v = _qkv(20)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1) @ v
    torch.testing.assert_close(reference.dense_attention(q, k, v), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------


def test_quantize_int8_blockwise_layout_and_rounding_error() -> None:
    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    w[:128, :128] = 0  # an all-zero tile must quantize to zeros, not NaN
    q, scale = reference.quantize_int8_blockwise(w)
    assert q.dtype == torch.int8 and q.shape == (300, 200)
    assert scale.dtype == torch.float32 and scale.shape == (3, 2)
    # scale = absmax / 128 per tile (spec)
    assert scale[2, 1] == w[256:, 128:].abs().max() / 128
    # upstream's absmax floor: a zero tile stores 1e-8 / 128 and quantizes to zeros
    assert scale[0, 0] == torch.tensor(1e-8) / 128 and (q[:128, :128] == 0).all()
    deq = reference.dequantize_int8_blockwise(q, scale)
    per_element_scale = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:300, :200]
    err = (deq - w).abs()
    # Round to nearest everywhere, except that +absmax/scale = 128 does not fit int8 and is clamped to 127.
    clamped = (w >= 127.5 * per_element_scale) & (per_element_scale > 0)
    assert clamped.any() and (q[clamped] == 127).all()
    assert (err[~clamped] <= per_element_scale[~clamped] / 2 + 1e-6).all()
    assert (err[clamped] <= per_element_scale[clamped] + 1e-6).all()


def test_int8_linear_equals_integer_gemm_with_per_tile_dequant() -> None:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 150, 260, generator=g), torch.randn(140, 260, generator=g), torch.randn(140, generator=g)
    qw, sw = reference.quantize_int8_blockwise(w)
    qx, sx = reference.quantize_int8_blockwise(x.reshape(300, 260))
    # int32 accumulation per 128-wide K tile, then scaled by the activation-row tile and weight tile scales.
    expected = torch.zeros(300, 140, dtype=torch.float64)
    for kt in range(math.ceil(260 / 128)):
        ks = slice(kt * 128, (kt + 1) * 128)
        acc = (qx[:, ks].to(torch.int32) @ qw[:, ks].to(torch.int32).T).double()
        row_scale = sx[:, kt].double().repeat_interleave(128)[:300, None]
        col_scale = sw[:, kt].double().repeat_interleave(128)[None, :140]
        expected += acc * row_scale * col_scale
    expected = (expected + b.double()).float().reshape(2, 150, 140)
    torch.testing.assert_close(reference.int8_linear(x, qw, sw, b), expected, atol=1e-4, rtol=1e-5)


def test_int8_linear_close_to_float_linear() -> None:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(256, 384, generator=g), torch.randn(256, 384, generator=g), torch.randn(256, generator=g)
    qw, sw = reference.quantize_int8_blockwise(w)
    exact = F.linear(x, w, b)
    err = (reference.int8_linear(x, qw, sw, b) - exact).norm() / exact.norm()
    # Gaussian tiles: absmax ~ 4.5 sigma, step ~ 0.035 sigma, rounding noise ~ 1% per operand -> ~1.4% combined.
    assert err < 2e-2


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_modulate_matches_functional(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = (3 + 2 * torch.randn(2, 10, 64, generator=g)).to(dtype)
    shift, scale = torch.randn(2, 1, 64, generator=g), torch.randn(2, 1, 64, generator=g)
    expected = F.layer_norm(x.float(), (64,), eps=1e-6) * (1 + scale) + shift
    got = reference.layer_norm_modulate(x, shift, scale, 1e-6)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=1e-5 if dtype == torch.float32 else 3e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_functional(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = (5 * torch.randn(3, 7, 64, generator=g)).to(dtype)
    weight = torch.randn(64, generator=g)
    expected = F.rms_norm(x.float(), (64,), weight, eps=1e-6)
    got = reference.rms_norm(x, weight, 1e-6)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=1e-5 if dtype == torch.float32 else 3e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------------------------------


def test_rope_split_is_44_42_42_for_head_dim_128() -> None:
    assert reference.rope_axis_dims(128) == (44, 42, 42)
    theta = 10000.0
    cos, sin = reference.rope_tables((3, 4, 5), 128, theta)
    assert cos.shape == sin.shape == (60, 64) and cos.dtype == torch.float32
    angles = torch.atan2(sin.double(), cos.double())

    def token(f: int, h: int, w: int) -> int:
        return (f * 4 + h) * 5 + w

    # Moving along one axis changes exactly that axis's pairs: t owns pairs 0..21, h 22..42, w 43..63.
    def changed(a: int, b: int) -> list[int]:
        return torch.nonzero((angles[a] - angles[b]).abs() > 1e-9).flatten().tolist()

    assert changed(token(1, 0, 0), token(0, 0, 0)) == list(range(22))
    assert changed(token(0, 1, 0), token(0, 0, 0)) == list(range(22, 43))
    assert changed(token(0, 0, 1), token(0, 0, 0)) == list(range(43, 64))
    # freq_k = theta^(-2k/d_axis), angle = position * freq
    for pair, (axis_dim, k) in {0: (44, 0), 5: (44, 5), 22 + 7: (42, 7), 43 + 20: (42, 20)}.items():
        expected = 1 * theta ** (-2 * k / axis_dim)
        pos = token(1, 1, 1)
        assert math.isclose(math.cos(expected), cos[pos, pair].item(), abs_tol=1e-6)
        assert math.isclose(math.sin(expected), sin[pos, pair].item(), abs_tol=1e-6)
    assert torch.equal(cos[0], torch.ones(64))


def test_apply_rope_rotates_adjacent_pairs_like_complex_multiplication() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 3, 24, generator=g)
    cos, sin = reference.rope_tables((1, 3, 4), 24, 10000.0)
    as_complex = torch.view_as_complex(x.double().reshape(2, 12, 3, 12, 2))
    rotation = torch.polar(torch.ones_like(cos, dtype=torch.float64), torch.atan2(sin, cos).double())
    expected = torch.view_as_real(as_complex * rotation[None, :, None, :]).reshape(2, 12, 3, 24).float()
    got = reference.apply_rope(x, cos, sin)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1))
    assert reference.apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


def test_sla_long_sequences_split_into_passes_give_the_same_result(monkeypatch) -> None:
    q, k, v = _qkv(77, seed=3)
    w, b = 0.3 * torch.randn(16, 16), 0.1 * torch.randn(16)
    whole = reference.sla_attention(q, k, v, w, b, 0.4, 16, 8)
    # 2 heads x 77 keys x 16 rows -> one query block per pass, the last one partial.
    monkeypatch.setattr(reference, "_SPARSE_PASS_ELEMENTS", 2 * 77 * 16)
    torch.testing.assert_close(reference.sla_attention(q, k, v, w, b, 0.4, 16, 8), whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(whole, _naive_sla(q, k, v, w, b, 0.4, 16, 8), atol=1e-5, rtol=1e-4)
