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
