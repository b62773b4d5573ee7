"""Wan2.1 VAE: official key layout, latent shapes, causality, chunked = whole, strict checkpoint loading,
and the speed options (VAEOptions) against the reference path."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inference import vae as vae_module
from inference.configs import A14B, TINY
from inference.types import WeightsError
from inference.vae import REFERENCE_OPTIONS, VAEOptions, WanVAE, build_vae, load_vae


def _official_vae_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of `Wan2.1_VAE.pth`, written out from the published layout (base 96, z 16, mult 1,2,4,4)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, cin: int, cout: int, kernel: tuple[int, ...]) -> None:
        shapes[f"{prefix}.weight"] = (cout, cin, *kernel)
        shapes[f"{prefix}.bias"] = (cout,)

    def res(prefix: str, cin: int, cout: int) -> None:
        shapes[f"{prefix}.residual.0.gamma"] = (cin, 1, 1, 1)
        conv(f"{prefix}.residual.2", cin, cout, (3, 3, 3))
        shapes[f"{prefix}.residual.3.gamma"] = (cout, 1, 1, 1)
        conv(f"{prefix}.residual.6", cout, cout, (3, 3, 3))
        if cin != cout:
            conv(f"{prefix}.shortcut", cin, cout, (1, 1, 1))

    def attn(prefix: str, c: int) -> None:
        shapes[f"{prefix}.norm.gamma"] = (c, 1, 1)
        conv(f"{prefix}.to_qkv", c, 3 * c, (1, 1))
        conv(f"{prefix}.proj", c, c, (1, 1))

    conv("encoder.conv1", 3, 96, (3, 3, 3))
    encoder = [
        ("res", 96, 96), ("res", 96, 96), ("down", 96, False),
        ("res", 96, 192), ("res", 192, 192), ("down", 192, True),
        ("res", 192, 384), ("res", 384, 384), ("down", 384, True),
        ("res", 384, 384), ("res", 384, 384),
    ]  # fmt: skip
    for i, entry in enumerate(encoder):
        prefix = f"encoder.downsamples.{i}"
        if entry[0] == "res":
            res(prefix, entry[1], entry[2])
        else:
            conv(f"{prefix}.resample.1", entry[1], entry[1], (3, 3))
            if entry[2]:
                conv(f"{prefix}.time_conv", entry[1], entry[1], (3, 1, 1))
    for side in ("encoder", "decoder"):
        res(f"{side}.middle.0", 384, 384)
        attn(f"{side}.middle.1", 384)
        res(f"{side}.middle.2", 384, 384)
    shapes["encoder.head.0.gamma"] = (384, 1, 1, 1)
    conv("encoder.head.2", 384, 32, (3, 3, 3))
    conv("conv1", 32, 32, (1, 1, 1))
    conv("conv2", 16, 16, (1, 1, 1))
    conv("decoder.conv1", 16, 384, (3, 3, 3))
    decoder = [
        ("res", 384, 384), ("res", 384, 384), ("res", 384, 384), ("up", 384, True),
        ("res", 192, 384), ("res", 384, 384), ("res", 384, 384), ("up", 384, True),
        ("res", 192, 192), ("res", 192, 192), ("res", 192, 192), ("up", 192, False),
        ("res", 96, 96), ("res", 96, 96), ("res", 96, 96),
    ]  # fmt: skip
    for i, entry in enumerate(decoder):
        prefix = f"decoder.upsamples.{i}"
        if entry[0] == "res":
            res(prefix, entry[1], entry[2])
        else:
            conv(f"{prefix}.resample.1", entry[1], entry[1] // 2, (3, 3))
            if entry[2]:
                conv(f"{prefix}.time_conv", entry[1], 2 * entry[1], (3, 1, 1))
    shapes["decoder.head.0.gamma"] = (96, 1, 1, 1)
    conv("decoder.head.2", 96, 3, (3, 3, 3))
    return shapes


def test_a14b_vae_has_the_official_keys_and_shapes() -> None:
    with torch.device("meta"):
        vae = WanVAE(A14B.vae)
    got = {key: tuple(t.shape) for key, t in vae.state_dict().items()}
    expected = _official_vae_shapes()
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    assert len(got) == 194


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    """Tiny VAE with every weight randomised (incl. the zero-initialised attention output) so all paths matter."""
    model = build_vae(TINY.vae)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("proj.weight") or name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _video(frames: int, seed: int = 0, h: int = 16, w: int = 24) -> torch.Tensor:
    return torch.rand(1, 3, frames, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_latent_and_video_shapes(vae: WanVAE, frames: int) -> None:
    z = vae.encode(_video(frames, h=32, w=48))
    assert z.shape == (1, 16, 1 + (frames - 1) // 4, 4, 6)
    video = vae.decode(z)
    assert video.shape == (1, 3, frames, 32, 48)
    assert torch.isfinite(video).all() and video.abs().max() <= 1


def test_frame_counts_other_than_4k_plus_1_are_refused(vae: WanVAE) -> None:
    with pytest.raises(ValueError, match="4k\\+1 frames, got 6"):
        vae.encode(_video(6))


def test_encoding_is_causal(vae: WanVAE) -> None:
    video = _video(9)
    later_changed = video.clone()
    later_changed[:, :, 5:] = _video(4, seed=7)[:, :, :4]
    first_changed = video.clone()
    first_changed[:, :, 1:] = -video[:, :, 1:]
    z, z_later, z_first = vae.encode(video), vae.encode(later_changed), vae.encode(first_changed)
    # Latent frame 0 sees video frame 0 only; latent frame 1 sees frames 0..4.
    torch.testing.assert_close(z_first[:, :, 0], z[:, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(z_later[:, :, :2], z[:, :, :2], atol=1e-6, rtol=0)
    assert (z_later[:, :, 2] - z[:, :, 2]).abs().max() > 1e-3


def test_decoding_is_causal(vae: WanVAE) -> None:
    z = torch.randn(1, 16, 3, 2, 3, generator=torch.Generator().manual_seed(3))
    changed = z.clone()
    changed[:, :, 1:] = torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(4))
    changed_last = z.clone()
    changed_last[:, :, 2] += 1.0
    video, video_changed, video_last = vae.decode(z), vae.decode(changed), vae.decode(changed_last)
    torch.testing.assert_close(video_changed[:, :, 0], video[:, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(video_last[:, :, :5], video[:, :, :5], atol=1e-6, rtol=0)
    assert (video_last[:, :, 5:] - video[:, :, 5:]).abs().max() > 1e-3


def test_chunked_encode_equals_whole_encode(vae: WanVAE) -> None:
    video = _video(13, seed=5)
    streamed = vae.encode(video)  # chunks of 1, 4, 4, 4 frames
    torch.testing.assert_close(vae.encode(video, chunk_latents=None), streamed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae.encode(video, chunk_latents=2), streamed, atol=1e-5, rtol=1e-5)


def test_chunked_decode_equals_whole_decode(vae: WanVAE) -> None:
    z = torch.randn(1, 16, 4, 2, 3, generator=torch.Generator().manual_seed(6))
    streamed = vae.decode(z)  # one latent frame at a time
    torch.testing.assert_close(vae.decode(z, chunk_latents=None), streamed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae.decode(z, chunk_latents=3), streamed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("chunk_latents", "sizes"), [(1, [1, 4, 4, 4]), (2, [5, 8]), (None, [13])])
def test_on_chunk_gets_each_decoded_chunk_in_order(vae: WanVAE, chunk_latents: int | None, sizes: list[int]) -> None:
    z = torch.randn(1, 16, 4, 2, 3, generator=torch.Generator().manual_seed(8)) * 3  # big: clamping matters
    chunks: list[torch.Tensor] = []
    video = vae.decode(z, chunk_latents=chunk_latents, on_chunk=lambda chunk: chunks.append(chunk.clone()))
    assert [chunk.shape[2] for chunk in chunks] == sizes
    assert torch.equal(torch.cat(chunks, dim=2), video)  # exactly what decode returns, clamped alike
    assert video.abs().max() <= 1
    torch.testing.assert_close(video, vae.decode(z, chunk_latents=chunk_latents), atol=0, rtol=0)


def test_random_tiny_vae_is_seeded_and_usable() -> None:
    a, b = load_vae(TINY, None), load_vae(TINY, None)
    for (key, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), key
    video = a.decode(torch.randn(1, 16, 2, 6, 10, generator=torch.Generator().manual_seed(0)))
    assert video.shape == (1, 3, 5, 48, 80)
    assert torch.isfinite(video).all() and video.abs().max() <= 1 and video.std() > 1e-3


def test_bfloat16_matches_float32(vae: WanVAE) -> None:
    video = _video(5, seed=9)
    half = build_vae(TINY.vae)
    half.load_state_dict(vae.state_dict())
    half = half.to(torch.bfloat16)
    z32, z16 = vae.encode(video), half.encode(video)
    assert z16.dtype == torch.bfloat16
    assert (z16.float() - z32).abs().mean() < 0.05 * z32.abs().mean()


def test_checkpoint_round_trips_strictly(vae: WanVAE, tmp_path) -> None:
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(vae.state_dict(), path)
    loaded = load_vae(TINY, path, device="cpu", dtype=torch.float32)
    for key, tensor in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    z = torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(loaded.decode(z), vae.decode(z), atol=0, rtol=0)


def test_renamed_key_raises_weights_error_naming_it(vae: WanVAE, tmp_path) -> None:
    state = dict(vae.state_dict())
    state["decoder.head.2.weight_renamed"] = state.pop("decoder.head.2.weight")
    path = tmp_path / "vae.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"decoder\.head\.2\.weight"):
        load_vae(TINY, path)


def test_wrong_shape_raises_weights_error_naming_it(vae: WanVAE, tmp_path) -> None:
    state = dict(vae.state_dict())
    state["encoder.conv1.weight"] = torch.zeros(9, 3, 3, 3, 3)
    path = tmp_path / "vae.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"encoder\.conv1\.weight"):
        load_vae(TINY, path)


# Speed options (VAEOptions): every exact option must give the reference path's numbers (fp32, CPU).

_EXACT_VARIANTS = {
    "channels_last": VAEOptions(cudnn_benchmark=False, channels_last=True, fewer_copies=False),
    "fewer_copies": VAEOptions(cudnn_benchmark=False, channels_last=False, fewer_copies=True),
    "default": VAEOptions(),
}


@pytest.fixture
def with_options(vae: WanVAE):
    """Set the shared tiny VAE's options for one test and put the default back afterwards."""

    def apply(options: VAEOptions) -> WanVAE:
        vae.options = options
        return vae

    yield apply
    vae.options = VAEOptions()


@pytest.mark.parametrize("variant", sorted(_EXACT_VARIANTS))
def test_exact_options_match_the_reference_path(with_options, variant: str) -> None:
    video = _video(9, seed=11, h=32, w=48)
    z_in = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(12))
    ref = with_options(REFERENCE_OPTIONS)
    z_ref, x_ref = ref.encode(video), ref.decode(z_in)
    fast = with_options(_EXACT_VARIANTS[variant])
    z_fast, x_fast = fast.encode(video), fast.decode(z_in)
    torch.testing.assert_close(z_fast, z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_fast, x_ref, atol=1e-5, rtol=1e-5)
    # Callers get contiguous tensors whatever the working layout.
    assert z_fast.is_contiguous() and x_fast.is_contiguous()


def test_fast_path_big_chunks_equal_chunk_one(with_options) -> None:
    vae = with_options(VAEOptions())
    video = _video(13, seed=13)
    z = torch.randn(1, 16, 4, 2, 3, generator=torch.Generator().manual_seed(14))
    enc1, dec1 = vae.encode(video), vae.decode(z)
    for chunk in (2, 3, None):
        torch.testing.assert_close(vae.encode(video, chunk_latents=chunk), enc1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.decode(z, chunk_latents=chunk), dec1, atol=1e-5, rtol=1e-5)


def test_weight_layout_follows_the_options(with_options) -> None:
    vae = with_options(VAEOptions(channels_last=True))
    vae.decode(torch.randn(1, 16, 1, 2, 3))
    w = vae.decoder.conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
    assert vae.decoder.middle[1].to_qkv.weight.is_contiguous(memory_format=torch.channels_last)
    vae = with_options(REFERENCE_OPTIONS)
    vae.decode(torch.randn(1, 16, 1, 2, 3))
    assert vae.decoder.conv1.weight.is_contiguous()
    # Options are not module state: the keys are those of a freshly built model.
    assert list(vae.state_dict()) == list(build_vae(TINY.vae).state_dict())


def test_fused_norm_path_matches_reference_without_triton(with_options, monkeypatch) -> None:
    """The fused path's buffer logic (norm written into the conv's context buffer), with the reference norm math
    (the Triton kernel itself is checked under the interpreter in tests/kernels)."""
    monkeypatch.setattr(vae_module, "_use_triton", lambda x: False)
    video = _video(9, seed=15)
    z_in = torch.randn(1, 16, 3, 2, 3, generator=torch.Generator().manual_seed(16))
    ref = with_options(REFERENCE_OPTIONS)
    z_ref, x_ref = ref.encode(video), ref.decode(z_in)
    for layout in (False, True):
        fused = with_options(VAEOptions(cudnn_benchmark=False, channels_last=layout, fused_norm=True))
        torch.testing.assert_close(fused.encode(video), z_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.decode(z_in), x_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.decode(z_in, chunk_latents=2), x_ref, atol=1e-5, rtol=1e-5)


def test_bfloat16_fast_path_is_close_to_reference(vae: WanVAE) -> None:
    half = build_vae(TINY.vae)
    half.load_state_dict(vae.state_dict())
    half = half.to(torch.bfloat16)
    z = torch.randn(1, 16, 3, 2, 3, generator=torch.Generator().manual_seed(17))
    half.options = REFERENCE_OPTIONS
    ref = half.decode(z).float()
    half.options = VAEOptions()
    fast = half.decode(z).float()
    assert (fast - ref).norm() < 0.02 * ref.norm()


def _conditioning_video(frames: int, seed: int, h: int = 16, w: int = 24) -> torch.Tensor:
    """The pipeline's I2V conditioning: an image as frame 0, then black (zero) frames."""
    video = torch.zeros(1, 3, frames, h, w)
    video[:, :, 0] = _video(1, seed=seed, h=h, w=w)[:, :, 0]
    return video


@pytest.mark.parametrize("chunk", [1, 2, None])
def test_steady_frames_encode_equals_the_full_computation(with_options, monkeypatch, chunk: int | None) -> None:
    """Computing the repeated outputs of the black tail once gives the reference path's latents, and it really
    computes fewer conv output frames (else this option would be dead weight)."""
    video = _conditioning_video(33, seed=21)
    z_ref = with_options(REFERENCE_OPTIONS).encode(video, chunk_latents=chunk)
    computed: list[int] = []
    conv3d = vae_module.F.conv3d

    def counting(x: torch.Tensor, weight: torch.Tensor, *args: object) -> torch.Tensor:
        out = conv3d(x, weight, *args)
        computed.append(out.shape[2] * out.shape[3] * out.shape[4] * weight.shape[0])
        return out

    for steady in (False, True):
        computed.clear()
        vae = with_options(VAEOptions(steady_frames=steady))
        monkeypatch.setattr(vae_module.F, "conv3d", counting)
        z = vae.encode(video, chunk_latents=chunk)
        monkeypatch.setattr(vae_module.F, "conv3d", conv3d)
        torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
        work = sum(computed)
        if not steady:
            full_work = work
    assert work < 0.8 * full_work


def test_steady_frames_leave_changing_videos_and_decode_alone(with_options) -> None:
    """A video whose frames all differ takes the full computation; a decode of repeated latents is computed
    frame by frame too (the option is encode-only) and still equals the reference."""
    video = _video(17, seed=22)
    z_in = torch.randn(1, 16, 1, 2, 3, generator=torch.Generator().manual_seed(23)).expand(1, 16, 5, 2, 3)
    ref = with_options(REFERENCE_OPTIONS)
    z_ref, x_ref = ref.encode(video, chunk_latents=2), ref.decode(z_in, chunk_latents=2)
    fast = with_options(VAEOptions(steady_frames=True))
    torch.testing.assert_close(fast.encode(video, chunk_latents=2), z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.decode(z_in, chunk_latents=2), x_ref, atol=1e-5, rtol=1e-5)


def test_fused_path_leaves_no_bias_pass_to_the_big_convs(with_options, monkeypatch) -> None:
    """On the fused path the convs outside residual blocks (encoder/decoder conv1, the resamplers' 2-D convs,
    the upsamplers' time convs) run without their bias, which is added inside the next fused kernel or copy; with
    biases large enough that a lost or doubled one shows, the result is still the reference path's."""
    monkeypatch.setattr(vae_module, "_use_triton", lambda x: False)
    vae = with_options(REFERENCE_OPTIONS)
    originals = {name: p.clone() for name, p in vae.named_parameters() if name.endswith("bias")}
    gen = torch.Generator().manual_seed(31)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen))
    try:
        video = _conditioning_video(17, seed=32, h=32, w=48)
        z_in = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(33))
        z_ref, x_ref = vae.encode(video, chunk_latents=2), vae.decode(z_in, chunk_latents=2)
        names = {m.weight: n for n, m in vae.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))}
        biased: set[str] = set()

        def spying(conv: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            def run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *args: object
                    ) -> torch.Tensor:  # fmt: skip
                if bias is not None:
                    biased.add(names[weight])
                return conv(x, weight, bias, *args)

            return run

        monkeypatch.setattr(vae_module.F, "conv2d", spying(F.conv2d))
        monkeypatch.setattr(vae_module.F, "conv3d", spying(F.conv3d))
        fused = with_options(VAEOptions(cudnn_benchmark=False))
        z, x = fused.encode(video, chunk_latents=2), fused.decode(z_in, chunk_latents=2)
        monkeypatch.undo()
    finally:
        with torch.no_grad():
            for name, p in vae.named_parameters():
                if name in originals:
                    p.copy_(originals[name])
    torch.testing.assert_close(z, z_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x, x_ref, atol=1e-4, rtol=1e-4)
    # What still adds its own bias: the heads, the 1x1 convs around the latents, the attention's 1x1 convs, and
    # the encoder's time downsamplers (their first frame skips the time conv, so no one bias stands for them).
    time_down = {f"{n}.{part}" for n, m in vae.named_modules() if isinstance(m, vae_module.Resample)
                 and m.mode == "downsample3d" for part in ("resample.1", "time_conv")}  # fmt: skip
    assert time_down
    left = {n for n in biased if not n.endswith(("head.2", "to_qkv", "proj")) and n not in ("conv1", "conv2")}
    assert left == time_down, left ^ time_down
