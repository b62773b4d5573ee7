"""The SLA kernel variants (TMA sparse kernel, fused k-pool + kv pass) against the reference, on CPU through
Triton's interpreter, which emulates host-side tensor descriptors (rows/columns outside the descriptor read 0)."""

from __future__ import annotations

import pytest
import torch

from turbokernels import reference


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _qkv(layout: str, batch: int, heads: int, length: int, dim: int, gen: torch.Generator):
    """q, k, v (B, H, L, D) views: "model" = slices of one fused (B, L, 3, H, D) qkv output, as the DiT makes them
    (row stride 3*H*D); "contiguous" = separate (B, H, L, D) tensors."""
    if layout == "model":
        qkv = torch.randn(batch, length, 3, heads, dim, generator=gen)
        qkv[:, :, 1] += 0.5  # a shared key offset: the block map must rank on smoothed keys
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen) for _ in range(3))
    return q, k + 0.5, v


@pytest.mark.parametrize("layout", ["model", "contiguous"])
@pytest.mark.parametrize("blocks_per_iter", [1, 2])
@pytest.mark.parametrize("topk", [0.3, 1.0])
def test_sla_tma_variant_matches_reference(interpreted_kernels, layout, blocks_per_iter, topk):
    sla = interpreted_kernels["sla_triton"]
    gen = torch.Generator().manual_seed(blocks_per_iter * 10 + int(topk * 10))
    # L = 200: partial last query block (8 rows of 32) and key block (8 of 16); 13 key blocks, keep 3 (odd) or all
    # 13 (odd, and the partial last block is always chosen, so the tail mask is exercised).
    q, k, v = _qkv(layout, 2, 2, 200, 32, gen)
    w = torch.randn(32, 32, generator=gen) * 0.2
    b = torch.randn(32, generator=gen) * 0.2
    assert sla.tma_supported(q, k, v)  # the TMA kernel itself runs, not the pointer fallback
    ref = reference.sla_attention(q, k, v, w, b, topk, 32, 16)
    for side_impl in ("separate", "fused"):
        out = sla.sla_attention(q, k, v, w, b, topk, 32, 16, sparse_impl="tma", blocks_per_iter=blocks_per_iter,
                                side_impl=side_impl)
        assert out.shape == ref.shape
        assert torch.isfinite(out).all()
        assert _rel(out, ref) < 1e-5, side_impl


@pytest.mark.parametrize("blocks_per_iter", [1, 2])
def test_sla_tma_single_chosen_block_and_small_programs(interpreted_kernels, blocks_per_iter):
    sla = interpreted_kernels["sla_triton"]
    gen = torch.Generator().manual_seed(21)
    q, k, v = _qkv("model", 1, 3, 100, 16, gen)
    w, b = torch.eye(16) * 0.5, torch.zeros(16)
    # keep = max(1, int(0.1 * 7)) = 1: only the tail step runs; block_m 16 < block_q 32.
    for fuse_linear in (True, False):
        out = sla.sla_attention(q, k, v, w, b, 0.1, 32, 16, sparse_impl="tma", blocks_per_iter=blocks_per_iter,
                                block_m=16, fuse_linear=fuse_linear)
        assert _rel(out, reference.sla_attention(q, k, v, w, b, 0.1, 32, 16)) < 1e-5


def test_tma_layout_rejects_what_a_descriptor_cannot_address(interpreted_kernels):
    sla = interpreted_kernels["sla_triton"]
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(1, 2, 64, 16, generator=gen)
    assert sla._tma_layout(x) == (128, 16, 16, 128, 64, 0)
    model = torch.randn(1, 64, 2, 16, generator=gen).transpose(1, 2)
    assert sla._tma_layout(model) == (64, 32, 32, 64, 0, 16)
    assert sla._tma_layout(x.transpose(2, 3).contiguous().transpose(2, 3)) is None  # stride(D) != 1
    assert sla._tma_layout(torch.randn(2, 2, 64, 16, generator=gen).transpose(0, 1)) is None  # batch inside heads
    assert sla._tma_layout(torch.randn(1, 2, 64, 17, generator=gen)[..., :16]) is None  # row stride 68 B
    # Such tensors still get the right answer: the TMA request falls back to the pointer kernel.
    q = torch.randn(1, 2, 64, 16, generator=gen).transpose(2, 3).contiguous().transpose(2, 3)
    w, b = torch.eye(16), torch.zeros(16)
    assert not sla.tma_supported(q, q, q)
    out = sla.sla_attention(q, q, q, w, b, 0.5, 16, 16, sparse_impl="tma")
    assert _rel(out, reference.sla_attention(q, q, q, w, b, 0.5, 16, 16)) < 1e-5


def test_sla_variant_arguments_are_checked(interpreted_kernels):
    sla = interpreted_kernels["sla_triton"]
    q = torch.randn(1, 1, 64, 16)
    args = (q, q, q, torch.eye(16), torch.zeros(16), 0.5, 16, 16)
    with pytest.raises(ValueError, match="sparse_impl"):
        sla.sla_attention(*args, sparse_impl="wgmma")
    with pytest.raises(ValueError, match="side_impl"):
        sla.sla_attention(*args, side_impl="both")
    with pytest.raises(ValueError, match="1 or 2 key blocks"):
        sla.sla_attention(*args, sparse_impl="tma", blocks_per_iter=4)


def test_linear_kv_pool_is_linear_kv_plus_block_means(interpreted_kernels):
    sla = interpreted_kernels["sla_triton"]
    gen = torch.Generator().manual_seed(23)
    k, v = _qkv("model", 2, 2, 150, 16, gen)[1:]
    # 150 rows, splits of 64: three splits, the last one partial, and a partial last key block (22 of 32).
    kv, ksum, pooled, vmax = sla.linear_kv_pool(k, v, 32, rows_per_split=64)
    assert vmax is None  # only computed on request
    kv_ref, ksum_ref = sla.linear_kv(k, v)
    assert _rel(kv, kv_ref) < 1e-5
    assert _rel(ksum, ksum_ref) < 1e-5
    assert _rel(pooled, sla.block_means(k, 32)) < 1e-6
    assert _rel(pooled, reference._block_mean(k.float(), 32)) < 1e-6
    # The fp8 P.V path's per-channel absmax of v comes from the same pass; the other outputs do not change.
    kv2, _, _, vmax = sla.linear_kv_pool(k, v, 32, rows_per_split=64, v_absmax=True)
    assert torch.equal(vmax, v.abs().amax(dim=-2).reshape(4, 16))
    assert torch.equal(kv2, kv)


def test_transpose_v_fp8_layout_scales_and_padding(interpreted_kernels):
    """V^T in e4m3 for the fp8 P.V path: rows (b, h, d), keys padded to whole blocks with zeros, one scale per
    channel. The values are e4m3 numbers times a power of two per channel (and each channel reaches 448 times it),
    so quantizing is exact and the round trip must be too: the test checks the layout and the scales, while the
    rounding itself is the GPU's cvt (the interpreter of Triton 3.9 rounds 124.5 to 64, not 128)."""
    sla = interpreted_kernels["sla_triton"]
    gen = torch.Generator().manual_seed(25)
    codes = (torch.randn(2, 150, 3, 3, 16, generator=gen) * 60).clamp(-440, 440).to(torch.float8_e4m3fn).float()
    codes[:, 7, 2] = 448.0  # every channel's absmax
    v = codes[:, :, 2].transpose(1, 2) * 2.0 ** torch.arange(-8, 8)  # a (B, H, L, D) view, as the model's
    vt, scale = sla.transpose_v_fp8(v, v.abs().amax(dim=-2).reshape(6, 16), 32)
    assert vt.dtype == torch.float8_e4m3fn and vt.shape == (6 * 16, 160)  # L padded to whole key blocks
    assert torch.equal(scale, (2.0 ** torch.arange(-8, 8)).expand(6, 16))
    rows = vt.float().view(2, 3, 16, 160)
    assert torch.equal(rows[..., :150].transpose(-1, -2) * scale.view(2, 3, 1, 16), v)
    assert not rows[..., 150:].any()  # the padding keys are zeros


def test_gluon_build_failure_falls_back_to_the_tma_kernel(interpreted_kernels, monkeypatch, caplog):
    """A Triton whose Gluon API moved (the kernel does not compile) costs a warning, not a job: the TMA kernel
    runs instead and the Gluon kernel stays off for the process."""
    from triton.compiler.errors import CompilationError

    sla = interpreted_kernels["sla_triton"]
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 96, 32, generator=gen) for _ in range(3))
    w, b = torch.randn(32, 32, generator=gen) * 0.05, torch.zeros(32)
    expected = sla.sla_attention(q, k, v, w, b, 0.5, 32, 16, sparse_impl="tma")
    calls = []

    def broken(*args):
        calls.append(args)
        raise CompilationError("sla_gluon.py", None, "async_copy_global_to_shared has been removed")

    monkeypatch.setattr(sla, "gluon_supported", lambda *a: sla._gluon_disabled is None)
    monkeypatch.setattr(sla, "_gluon_sparse", broken)
    monkeypatch.setattr(sla, "_gluon_disabled", None)
    with caplog.at_level("WARNING"):
        first = sla.sla_attention(q, k, v, w, b, 0.5, 32, 16, sparse_impl="gluon")
        second = sla.sla_attention(q, k, v, w, b, 0.5, 32, 16, sparse_impl="gluon")
    assert len(calls) == 1  # given up after the first failure
    assert "Gluon kernel does not build" in caplog.text and sla._gluon_disabled
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_dispatch_gives_the_fp8_pv_flag_to_the_kernel_only(interpreted_kernels, kernel_backend, monkeypatch):
    """dispatch.sla_attention hands pv_fp8 to the kernel when asked (and calls it exactly as before when not), and
    runs the exact reference, flag ignored, on the reference backend."""
    sla = interpreted_kernels["sla_triton"]
    gen = torch.Generator().manual_seed(31)
    # dispatch's kernel takes bf16 or fp16; fp16 here, as Triton 3.9's interpreter gets these kernels' bf16 wrong
    # (outputs ~1e10; the GPU tests cover bf16).
    q, k, v = (x.half() for x in _qkv("model", 1, 2, 200, 32, gen))
    w, b = torch.randn(32, 32, generator=gen) * 0.2, torch.randn(32, generator=gen) * 0.2
    seen = []
    kernel = sla.sla_attention

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(sla, "sla_attention", spy)
    exact = kernel_backend.sla_attention(q, k, v, w, b, 0.5, 32, 16)
    # The fp8 product is Gluon-only (no interpreter): here the kernel takes the flag and stays exact.
    fp8 = kernel_backend.sla_attention(q, k, v, w, b, 0.5, 32, 16, pv_fp8=True)
    assert seen == [{}, {"pv_fp8": True}]
    assert torch.equal(fp8, exact) and _rel(exact, reference.sla_attention(q, k, v, w, b, 0.5, 32, 16)) < 1e-2
    kernel_backend.set_backend("reference")
    flagged = kernel_backend.sla_attention(q, k, v, w, b, 0.5, 32, 16, pv_fp8=True)
    assert len(seen) == 2  # the kernel was not called
    assert torch.equal(flagged, reference.sla_attention(q, k, v, w, b, 0.5, 32, 16))


def test_dit_fp8_pv_switch_reaches_every_sla_layer(monkeypatch):
    from inference.configs import TINY
    from inference.dit import SparseLinearAttention, WanDiT
    from turbokernels import dispatch

    dit = WanDiT(TINY.dit, attention="sla")
    layers = [m for m in dit.modules() if isinstance(m, SparseLinearAttention)]
    assert len(layers) == TINY.dit.num_layers
    assert not any(m.pv_fp8 for m in layers)  # exact unless asked
    dit.use_fp8_pv()
    assert all(m.pv_fp8 for m in layers)
    seen = {}
    monkeypatch.setattr(dispatch, "sla_attention", lambda *args, **kwargs: seen.update(kwargs) or args[0])
    q = torch.randn(1, TINY.dit.num_heads, 8, TINY.dit.head_dim)
    layers[0](q, q, q)
    assert seen == {"pv_fp8": True}
    dit.use_fp8_pv(False)
    assert not any(m.pv_fp8 for m in layers)
