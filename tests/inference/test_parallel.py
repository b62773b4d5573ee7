"""One job over several processes (inference/parallel): gloo groups of 2 and 4 CPU processes run the tiny model's
sequence-parallel DiT step, the split VAE, the pipeline's stages (whole sampling loop included) and whole jobs;
each must equal the one-process result within fp32 tolerance, on every rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.configs import TINY
from inference.parallel.group import split_sizes
from inference.parallel.launch import spawn
from inference.pipeline import I2VPipeline
from inference.vae import build_vae
from tests.inference import parallel_ranks as ranks

# fp32 on both sides; only the order of some sums differs (BLAS blocking over fewer rows, gathered keys).
FP32 = {"rtol": 1e-4, "atol": 1e-5}


def _image() -> Image.Image:
    y, x = np.mgrid[0:96, 0:160]
    pixels = np.stack([x * 255 // 159, y * 255 // 95, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    pixels[30:60, 60:100] = 250
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="module")
def reference() -> dict[str, object]:
    """The one-process results of everything the ranks compute."""
    out: dict[str, object] = {}
    x, t, context = ranks.step_inputs()
    with torch.no_grad():
        for kind, model in ranks.dit_models(["sla", "dense"]).items():
            out[f"step_{kind}"] = model(x, t, context)
    video, z = ranks.vae_inputs()
    vae = build_vae(TINY.vae).eval()
    for name, options in ranks.vae_options(full=True).items():
        vae.options = options
        out[f"vae_encode_{name}"] = vae.encode(video, chunk_latents=1)
        out[f"vae_decode_{name}"] = vae.decode(z, chunk_latents=2)
    out.update(ranks.recorded_generate(I2VPipeline.load("tiny", device="cpu"), _image()))
    return out


# The 2-rank group runs every check; the 4-rank group the main ones (the CPU budget of the suite is shared).
@pytest.fixture(scope="module", params=[2, 4], ids=["2-ranks", "4-ranks"])
def ranked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """Run the checks in one gloo group of 2 or 4 processes; each rank's results."""
    world = request.param
    folder = tmp_path_factory.mktemp(f"parallel{world}")
    spawn(ranks.run_everything, world, str(folder), _image(), world == 2)
    return [torch.load(Path(folder) / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def test_tiny_heads_split_two_and_four_ways() -> None:
    assert TINY.dit.num_heads % 4 == 0 and TINY.dit.head_dim == 16


def test_uneven_splits_are_as_even_as_possible() -> None:
    assert split_sizes(105, 4) == [27, 26, 26, 26]
    assert split_sizes(7, 4) == [2, 2, 2, 1]
    assert sum(split_sizes(75600, 8)) == 75600


@pytest.mark.parametrize("kind", ["sla", "dense"])
def test_sequence_parallel_step_equals_one_process(ranked, reference, kind: str) -> None:
    expected = reference[f"step_{kind}"]
    if f"step_{kind}" not in ranked[0]:
        assert len(ranked) == 4 and kind == "dense"  # run by the 2-rank group only
        return
    for out in ranked:
        torch.testing.assert_close(out[f"step_{kind}"], expected, **FP32)
        assert out[f"hooks_cleared_{kind}"], "the model must run alone again after the parallel block"


@pytest.mark.parametrize("options", ["fast", "reference"])
def test_parallel_vae_equals_one_process(ranked, reference, options: str) -> None:
    if f"vae_encode_{options}" not in ranked[0]:
        assert len(ranked) == 4 and options == "reference"  # run by the 2-rank group only
        return
    for out in ranked:
        torch.testing.assert_close(out[f"vae_encode_{options}"], reference[f"vae_encode_{options}"], **FP32)
        assert out[f"vae_encode_progress_{options}"] == [1, 5]  # the first frame, then 4 more (chunks of 1 latent)
        torch.testing.assert_close(out[f"vae_decode_{options}"], reference[f"vae_decode_{options}"], **FP32)
        # The streamed chunks are the whole frames, not a rank's slab.
        torch.testing.assert_close(out[f"vae_chunks_{options}"], out[f"vae_decode_{options}"], rtol=0, atol=0)


def test_image_latent_and_whole_sampling_loop_equal_one_process(ranked, reference) -> None:
    for out in ranked:
        for stage in ("condition", "latent"):
            torch.testing.assert_close(out[stage], reference[stage], **FP32, msg=lambda m, s=stage: f"{s}: {m}")
    # Every rank holds the same latent: the sampler's updates agree bit for bit.
    for out in ranked[1:]:
        assert torch.equal(out["latent"], ranked[0]["latent"])


def test_whole_job_frames_equal_one_process(ranked, reference) -> None:
    expected = reference["frames"]
    first = ranked[0]
    assert first["frames"].shape == expected.shape == (ranks.FRAMES, 96, 160, 3)
    # uint8 after fp32: a value sitting on a rounding boundary may move by one level, no more.
    diff = (first["frames"].int() - expected.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert first["events"][-1] == "done" and "denoise" in first["events"]
    assert sum(first["sunk"]) == ranks.FRAMES
    assert first["device_name"] == f"{first['world']} x cpu"
    for out in ranked[1:]:
        assert out["events"] == [] and out["sunk"] == [], "only rank 0 reports progress and feeds the encoder"


def test_rank_zero_cancel_stops_every_rank_at_the_same_point(ranked) -> None:
    if len(ranked) == 4:
        assert "canceled" not in ranked[0]  # run by the 2-rank group only
        return
    messages = {out["canceled"] for out in ranked}
    assert len(messages) == 1
    message = messages.pop()
    assert message is not None and "canceled before" in message
