"""The VAE's fused RMSNorm+SiLU kernel and the VAE speed options on a CUDA device (pytest -m gpu, in a pytest
process of their own without TRITON_INTERPRET, like test_kernels_gpu.py)."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _compiled_kernels():
    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        pytest.fail("GPU kernel tests must run without TRITON_INTERPRET (run them in their own pytest process)")


@pytest.mark.parametrize("channels", [96, 192, 384])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rms_norm_silu_on_gpu(channels: int, channels_last: bool) -> None:
    from turbokernels.vae_norms_triton import rms_norm_silu, rms_norm_silu_reference

    gen = torch.Generator(device="cuda").manual_seed(channels)
    x = torch.randn(1, channels, 3, 40, 72, device="cuda", generator=gen).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    gamma = (torch.rand(channels, device="cuda", generator=gen) + 0.5).bfloat16()
    out = rms_norm_silu(x, gamma, channels**0.5)
    ref = rms_norm_silu_reference(x.float(), gamma, channels**0.5)
    torch.testing.assert_close(out.float(), ref, atol=1e-6, rtol=2**-7)
    buf = torch.zeros(1, channels, 5, 40, 72, device="cuda", dtype=torch.bfloat16)
    if channels_last:
        buf = buf.contiguous(memory_format=torch.channels_last_3d)
    rms_norm_silu(x, gamma, channels**0.5, out=buf[:, :, 2:])
    assert torch.equal(buf[:, :, 2:], out) and not buf[:, :, :2].any()


def test_vae_options_on_gpu_match_the_reference_path() -> None:
    from inference.configs import TINY
    from inference.vae import REFERENCE_OPTIONS, VAEOptions, build_vae

    vae = build_vae(TINY.vae).cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    video = torch.rand(1, 3, 9, 64, 96, device="cuda", generator=gen) * 2 - 1
    z = torch.randn(1, 16, 3, 8, 12, device="cuda", generator=gen)
    vae.options = REFERENCE_OPTIONS
    # fp32 without TF32, so the comparison is about the code paths, not the convolution precision.
    flags = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        z_ref, x_ref = vae.encode(video), vae.decode(z)
        for options in (VAEOptions(), VAEOptions(fused_norm=True)):
            vae.options = options
            for chunk in (1, 2):
                torch.testing.assert_close(vae.encode(video, chunk_latents=chunk), z_ref, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(vae.decode(z, chunk_latents=chunk), x_ref, atol=1e-4, rtol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32 = flags


def test_differing_frames_on_gpu() -> None:
    from turbokernels.vae_norms_triton import differing_frames, differing_frames_reference

    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, 96, 10, 90, 160, device="cuda", generator=gen).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last_3d)
    x[:, :, 4:] = x[:, :, -1:]
    x[0, 95, 6, 89, 159] = -x[0, 95, 6, 89, 159] + 1  # the very last element of frame 6
    got = differing_frames(x)
    assert got.tolist() == differing_frames_reference(x).tolist() == [True] * 4 + [False, False, True, False, False]


def test_fused_bias_kernels_on_gpu() -> None:
    from turbokernels.vae_norms_triton import (
        add_bias_residual_,
        add_bias_residual_reference,
        rms_norm_silu,
        rms_norm_silu_reference,
    )

    gen = torch.Generator(device="cuda").manual_seed(5)
    shape = (1, 96, 4, 90, 160)
    y, skip = (torch.randn(shape, device="cuda", generator=gen).bfloat16().contiguous(
        memory_format=torch.channels_last_3d) for _ in range(2))  # fmt: skip
    bias = torch.randn(96, device="cuda", generator=gen)
    gamma = torch.rand(96, device="cuda", generator=gen) + 0.5
    out = rms_norm_silu(y, gamma, 96**0.5, bias=bias)
    torch.testing.assert_close(out.float(), rms_norm_silu_reference(y.float(), gamma, 96**0.5, bias=bias),
                               atol=1e-6, rtol=2**-7)  # fmt: skip
    expected = add_bias_residual_reference(y.clone(), skip, bias)
    torch.testing.assert_close(add_bias_residual_(y, skip, bias), expected, atol=0, rtol=0)


def test_steady_frames_encode_matches_the_full_computation_on_gpu() -> None:
    """The full-size VAE in bf16 at a small size, encoding the image + black frames: computing the repeated
    outputs once is as close to fp32 as computing every frame. Not bit-identical: cuDNN picks its algorithm per
    shape, and the shorter convs round differently (measured on the H200: 2.3e-3 from the full bf16 path, which
    is 4.8e-3 from fp32). And the path really skips work."""
    from bench.common import rel_err
    from inference import vae as vae_module
    from inference.configs import A14B
    from inference.vae import REFERENCE_OPTIONS, VAEOptions, build_vae

    vae = build_vae(A14B.vae).cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(4)
    video = torch.zeros(1, 3, 41, 64, 96, device="cuda")
    video[:, :, 0] = torch.rand(3, 64, 96, device="cuda", generator=gen) * 2 - 1
    vae.options = REFERENCE_OPTIONS
    flags = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        z_fp32 = vae.encode(video)
    finally:
        torch.backends.cudnn.allow_tf32 = flags
    vae = vae.bfloat16()
    vae.options = VAEOptions(steady_frames=False)
    z_full = vae.encode(video, chunk_latents=2)
    shortened = []
    original = vae_module.CausalConv3d._conv_steady

    def spy(self, buf, t, bias):  # type: ignore[no-untyped-def]
        out = original(self, buf, t, bias)
        shortened.append(t)
        return out

    vae_module.CausalConv3d._conv_steady = spy
    try:
        vae.options = VAEOptions()
        z_steady = vae.encode(video, chunk_latents=2)
    finally:
        vae_module.CausalConv3d._conv_steady = original
    assert shortened
    errors = rel_err(z_steady, z_fp32), rel_err(z_full, z_fp32)
    assert errors[0] < 1.25 * errors[1], errors


@pytest.mark.parametrize("length", [6240, 14400])  # a 480p and a 720p latent frame
def test_attention_by_matmuls_on_gpu(length: int) -> None:
    """The mid-block attention (one head of 384) by cuBLAS products and the Triton softmax: as close to the
    attention of its bf16 inputs in fp32 as PyTorch's bf16 SDPA, and the bf16 fused path uses it."""
    import torch.nn.functional as F

    from bench.common import rel_err
    from inference import vae as vae_module

    gen = torch.Generator(device="cuda").manual_seed(length)
    q, k, v = (torch.randn(2, length, 384, device="cuda", generator=gen).bfloat16() for _ in range(3))
    q = q * 4  # peakier than random scores, as trained attention is
    flags = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flags
    got = vae_module._attention_by_matmuls(q, k, v)
    sdpa = F.scaled_dot_product_attention(q, k, v)
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    assert rel_err(got, ref) <= 1.05 * rel_err(sdpa, ref), (rel_err(got, ref), rel_err(sdpa, ref))

    block = vae_module.AttentionBlock(384).cuda().bfloat16()
    used = []
    original = vae_module._attention_by_matmuls
    vae_module._attention_by_matmuls = lambda *a: used.append(1) or original(*a)
    token = vae_module._ACTIVE.set(vae_module.VAEOptions())
    try:
        block(torch.randn(1, 384, 2, 8, 12, device="cuda").bfloat16())
    finally:
        vae_module._ACTIVE.reset(token)
        vae_module._attention_by_matmuls = original
    assert used
