"""The VAE's fused RMSNorm+SiLU Triton kernel under Triton's interpreter (CPU) against its fp32 reference, and the
tiny VAE's fused-norm path end to end with the interpreted kernel."""

from __future__ import annotations

import importlib
import os

import pytest
import torch


@pytest.fixture(scope="module")
def vae_norms():
    """turbokernels.vae_norms_triton with its @triton.jit kernel built for the interpreter (see conftest.py)."""
    os.environ["TRITON_INTERPRET"] = "1"
    pytest.importorskip("triton")
    return importlib.reload(importlib.import_module("turbokernels.vae_norms_triton"))


def _map(shape: tuple[int, ...], seed: int, channels_last: bool) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("channels", [12, 96])  # not powers of two: masked channel lanes
def test_rms_norm_silu_matches_reference(vae_norms, channels_last: bool, silu: bool, channels: int) -> None:
    x = _map((2, channels, 3, 5, 7), 0, channels_last)
    gamma = 1 + 0.3 * torch.randn(channels, generator=torch.Generator().manual_seed(1))
    out = vae_norms.rms_norm_silu(x, gamma, channels**0.5, silu=silu)
    ref = vae_norms.rms_norm_silu_reference(x, gamma, channels**0.5, silu=silu)
    assert out.stride() == x.stride()  # same layout as the input
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_rms_norm_silu_writes_into_a_frame_slice(vae_norms, channels_last: bool) -> None:
    """The VAE writes the norm's output after the cached frames of the conv's context buffer."""
    x = _map((1, 8, 4, 6, 5), 2, channels_last)
    gamma = torch.rand(8, generator=torch.Generator().manual_seed(3)) + 0.5
    buf = _map((1, 8, 6, 6, 5), 4, channels_last)
    head = buf[:, :, :2].clone()
    vae_norms.rms_norm_silu(x, gamma, 8**0.5, out=buf[:, :, 2:])
    torch.testing.assert_close(buf[:, :, 2:], vae_norms.rms_norm_silu_reference(x, gamma, 8**0.5), atol=1e-5, rtol=1e-5)
    assert torch.equal(buf[:, :, :2], head)


def test_rms_norm_silu_bf16_is_within_one_rounding_of_fp32(vae_norms) -> None:
    x = _map((1, 16, 2, 4, 4), 5, True).bfloat16()
    gamma = torch.rand(16, generator=torch.Generator().manual_seed(6)) + 0.5
    out = vae_norms.rms_norm_silu(x, gamma, 4.0)
    assert out.dtype == torch.bfloat16
    # One bf16 ulp (2**-8 relative): the interpreter's fp32 -> bf16 cast need not round like the GPU's.
    torch.testing.assert_close(out.float(), vae_norms.rms_norm_silu_reference(x.float(), gamma, 4.0),
                               atol=1e-6, rtol=2**-7)  # fmt: skip


def test_tiny_vae_fused_norm_matches_reference(vae_norms, monkeypatch) -> None:
    from inference import vae as vae_module
    from inference.configs import TINY
    from inference.vae import REFERENCE_OPTIONS, VAEOptions, build_vae

    # The VAE takes the kernel on CUDA only; here it runs under the interpreter on CPU.
    launches = []
    monkeypatch.setattr(vae_module, "_use_triton", lambda x: launches.append(x.shape) or True)

    vae = build_vae(TINY.vae).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(8))
    vae.options = REFERENCE_OPTIONS
    z_ref, x_ref = vae.encode(video), vae.decode(z)
    vae.options = VAEOptions(fused_norm=True)
    torch.testing.assert_close(vae.encode(video), z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae.decode(z), x_ref, atol=1e-5, rtol=1e-5)
    assert launches  # the fused path really ran the kernel


@pytest.mark.parametrize("channels_last", [False, True])
def test_differing_frames_matches_reference(vae_norms, channels_last: bool) -> None:
    """Frames equal to the last one, one element changed in another: the kernel flags exactly the differing
    frames, in both batch items (the contiguous layout takes the reference path)."""
    x = _map((2, 5, 6, 4, 7), 9, False)
    x[:, :, 2:] = x[:, :, -1:]  # frames 2..5 equal the last
    x[1, 3, 3, 2, 6] += 1.0  # batch item 1 changes frame 3 in one element
    x[0, 0, 4, 0, 0] = float("nan")  # NaN differs from everything
    x = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
    got = vae_norms.differing_frames(x)
    assert got.tolist() == vae_norms.differing_frames_reference(x).tolist() == [True, True, False, True, True]
    assert vae_norms.differing_frames(x[:, :, :1]).numel() == 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_rms_norm_silu_with_the_previous_convs_bias(vae_norms, channels_last: bool) -> None:
    x = _map((1, 12, 3, 5, 7), 10, channels_last)
    gamma = torch.rand(12, generator=torch.Generator().manual_seed(11)) + 0.5
    bias = torch.randn(12, generator=torch.Generator().manual_seed(12))
    out = vae_norms.rms_norm_silu(x, gamma, 12**0.5, bias=bias)
    ref = vae_norms.rms_norm_silu_reference(x + bias.view(1, -1, 1, 1, 1), gamma, 12**0.5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae_norms.rms_norm_silu_reference(x, gamma, 12**0.5, bias=bias), ref)


@pytest.mark.parametrize("channels_last", [False, True])
def test_add_bias_residual_matches_reference(vae_norms, channels_last: bool) -> None:
    y = _map((2, 12, 3, 5, 7), 13, channels_last)
    skip = _map((2, 12, 3, 5, 7), 14, not channels_last)  # the two layouts mixed
    bias = torch.randn(12, generator=torch.Generator().manual_seed(15))
    expected = y + skip + bias.view(1, -1, 1, 1, 1)
    got = vae_norms.add_bias_residual_(y, skip, bias)
    assert got is y  # in place
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [7, 300])  # a masked tail, and a row over several warps
def test_scaled_softmax_split_matches_reference(vae_norms, length: int) -> None:
    s = torch.randn(2, 5, length, generator=torch.Generator().manual_seed(16)) * 20
    exact = torch.softmax(s * 0.125, dim=-1)
    hi, lo = vae_norms.scaled_softmax_split(s, 0.125, torch.bfloat16)
    assert hi.dtype == lo.dtype == torch.bfloat16 and hi.shape == lo.shape == s.shape
    # hi is p rounded (the interpreter's cast may truncate: a whole bf16 ulp), hi + lo is p to ~16 bits.
    torch.testing.assert_close(hi.float(), exact, atol=1e-6, rtol=2**-7)
    torch.testing.assert_close(hi.float() + lo.float(), exact, atol=1e-8, rtol=2**-14)
    ref_hi, ref_lo = vae_norms.scaled_softmax_split_reference(s, 0.125, torch.bfloat16)
    torch.testing.assert_close(ref_hi.float() + ref_lo.float(), exact, atol=1e-8, rtol=2**-14)
