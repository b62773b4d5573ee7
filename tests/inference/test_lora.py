"""LoRA per request on the tiny model: file layouts, errors, unmerged = merged, strength 0, no leak between jobs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from inference import lora
from inference.checkpoint import load_dit
from inference.configs import TINY
from inference.dit import WanDiT
from inference.pipeline import I2VPipeline
from inference.types import GenerationRequest, InferenceInputError, WeightsError

DIM, FFN = TINY.dit.dim, TINY.dit.ffn_dim
TARGET_SHAPES = {"self_attn.q": (DIM, DIM), "self_attn.k": (DIM, DIM), "self_attn.v": (DIM, DIM),
                 "self_attn.o": (DIM, DIM), "cross_attn.q": (DIM, DIM), "cross_attn.k": (DIM, DIM),
                 "cross_attn.v": (DIM, DIM), "cross_attn.o": (DIM, DIM), "ffn.0": (FFN, DIM), "ffn.2": (DIM, FFN)}


def lora_state(seed: int, layout: str = "ab", rank: int = 4, prefix: str = "diffusion_model.", alpha: float | None = None,
               targets: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A random LoRA over every block linear of tiny (or `targets`), in one of the accepted key layouts."""
    gen = torch.Generator().manual_seed(seed)
    down_key, up_key = ("lora_A", "lora_B") if layout == "ab" else ("lora_down", "lora_up")
    state = {}
    for block in range(TINY.dit.num_layers):
        for target, (out_f, in_f) in TARGET_SHAPES.items():
            name = f"blocks.{block}.{target}"
            if targets is not None and name not in targets:
                continue
            state[f"{prefix}{name}.{down_key}.weight"] = torch.randn(rank, in_f, generator=gen) * 0.3
            state[f"{prefix}{name}.{up_key}.weight"] = torch.randn(out_f, rank, generator=gen) * 0.3
            if alpha is not None:
                state[f"{prefix}{name}.alpha"] = torch.tensor(alpha)
    return state


def install(root: Path, name: str, high: dict[str, torch.Tensor] | None, low: dict[str, torch.Tensor] | None) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    manifest: dict[str, object] = {"title": name.title(), "description": "test LoRA", "default_strength": 1.0}
    for key, state in (("high_noise", high), ("low_noise", low)):
        if state is not None:
            save_file(state, str(folder / f"{key}.safetensors"))
            manifest[key] = f"{key}.safetensors"
    (folder / "manifest.json").write_text(json.dumps(manifest))


def dit_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, TINY.dit.in_dim, 2, 8, 8, generator=gen)
    return x, torch.tensor([900.0]), torch.randn(1, 12, TINY.dit.text_dim, generator=gen)


@pytest.fixture(scope="module")
def dit() -> WanDiT:
    return load_dit(TINY, None, device="cpu", dtype=torch.float32, attention="sla", expert="high").eval()


@pytest.mark.parametrize(("layout", "prefix", "alpha"), [("ab", "diffusion_model.", None), ("ab", "", None),
                                                         ("updown", "", 2.0), ("updown", "diffusion_model.", 8.0)])
def test_unmerged_equals_merged_in_fp32(dit: WanDiT, layout: str, prefix: str, alpha: float | None) -> None:
    pairs = lora.parse_lora_state(lora_state(1, layout, prefix=prefix, alpha=alpha), "test")
    assert len(pairs) == TINY.dit.num_layers * len(TARGET_SHAPES)
    strength = 0.7
    x, t, ctx = dit_inputs()
    with torch.no_grad():
        bare = dit(x, t, ctx)
        with lora.applied(lora.build_paths(dit, [(pairs, strength)], torch.device("cpu"), torch.float32)) as n:
            unmerged = dit(x, t, ctx)
        assert n == len(pairs)
        assert torch.equal(dit(x, t, ctx), bare)  # hooks gone: the model is untouched
        merged_dit = copy.deepcopy(dit)
        lora.merge_into(merged_dit, pairs, strength)
        merged = merged_dit(x, t, ctx)
    assert (unmerged - bare).abs().max() > 1e-2  # the LoRA changes the output...
    torch.testing.assert_close(unmerged, merged, atol=2e-5, rtol=1e-5)  # ...exactly as merging it would


def test_alpha_scales_by_alpha_over_rank() -> None:
    pairs = lora.parse_lora_state(lora_state(2, "updown", rank=4, alpha=2.0), "x")
    assert {p.scale for p in pairs.values()} == {0.5}
    assert {p.scale for p in lora.parse_lora_state(lora_state(2, "ab"), "x").values()} == {1.0}


def test_two_loras_add_up_and_fused_qkv_matches_separate(dit: WanDiT) -> None:
    first = lora.parse_lora_state(lora_state(3), "a")
    second = lora.parse_lora_state(lora_state(4, "updown", rank=3, alpha=1.5), "b")
    x, t, ctx = dit_inputs(1)
    fp8_dit = copy.deepcopy(dit)
    fp8_dit.use_fp8_linears(fuse=True)  # q/k/v fused into one layer fed with fp8 rows (CPU: same numbers in fp32)
    with torch.no_grad():
        merged_dit = copy.deepcopy(dit)
        lora.merge_into(merged_dit, first, 0.5)
        lora.merge_into(merged_dit, second, -1.2)
        with lora.applied(lora.build_paths(dit, [(first, 0.5), (second, -1.2)], torch.device("cpu"), torch.float32)):
            both = dit(x, t, ctx)
        torch.testing.assert_close(both, merged_dit(x, t, ctx), atol=2e-5, rtol=1e-5)
        bare8 = fp8_dit(x, t, ctx)
        with lora.applied(lora.build_paths(fp8_dit, [(first, 0.5), (second, -1.2)], torch.device("cpu"),
                                           torch.float32)) as n:
            with8 = fp8_dit(x, t, ctx)
        assert n == TINY.dit.num_layers * 8  # qkv, o, 4 cross, 2 ffn per block
    # fp8 linears: the low-rank path reads the same fp8 rows; the change it makes matches the exact change
    exact_change = (both - dit(x, t, ctx)).norm()
    assert ((with8 - bare8) - (both - dit(x, t, ctx))).norm() < 0.1 * exact_change


def test_strength_zero_is_no_lora(dit: WanDiT) -> None:
    pairs = lora.parse_lora_state(lora_state(5), "z")
    x, t, ctx = dit_inputs()
    with torch.no_grad():
        bare = dit(x, t, ctx)
        paths = lora.build_paths(dit, [(pairs, 0.0)], torch.device("cpu"), torch.float32)
        with lora.applied(paths) as n:
            assert n == 0 and torch.equal(dit(x, t, ctx), bare)


@pytest.mark.parametrize(("state", "fragment"), [
    ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, DIM),
      "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(DIM, 2),
      "diffusion_model.blocks.0.norm3.diff": torch.zeros(DIM),
      "text_embedding.0.lora_A.weight": torch.zeros(2, 32)},
     "keys not understood: diffusion_model.blocks.0.norm3.diff, text_embedding.0.lora_A.weight"),
    ({"blocks.0.ffn.0.lora_A.weight": torch.zeros(2, DIM)}, "blocks.0.ffn.0 has no up"),
    ({"blocks.0.ffn.0.lora_A.weight": torch.zeros(2, DIM), "blocks.0.ffn.0.lora_B.weight": torch.zeros(FFN, 3)},
     "expected A [rank, in] and B [out, rank]"),
    ({}, "holds no LoRA weights"),
])
def test_bad_files_are_errors_naming_the_problem(state: dict[str, torch.Tensor], fragment: str) -> None:
    with pytest.raises(WeightsError, match=r"LoRA file f\.safetensors") as caught:
        lora.parse_lora_state(state, "f.safetensors")
    assert fragment in str(caught.value)


def test_a_lora_for_another_model_shape_is_refused(dit: WanDiT) -> None:
    wide = {"blocks.0.ffn.2.lora_A.weight": torch.zeros(2, 5120), "blocks.0.ffn.2.lora_B.weight": torch.zeros(DIM, 2)}
    with pytest.raises(WeightsError, match=r"blocks.0.ffn.2 is 64x5120.*64x128"):
        lora.build_paths(dit, [(lora.parse_lora_state(wide, "w"), 1.0)], torch.device("cpu"), torch.float32)
    deep = {"blocks.39.ffn.2.lora_A.weight": torch.zeros(2, FFN), "blocks.39.ffn.2.lora_B.weight": torch.zeros(DIM, 2)}
    with pytest.raises(WeightsError, match=r"blocks\.39\.ffn\.2, which this model does not have"):
        lora.build_paths(dit, [(lora.parse_lora_state(deep, "d"), 1.0)], torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(("loras", "fragment"), [
    ((("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)), "at most 3"),
    ((("a", 1.0), ("a", 0.5)), "named twice"),
    ((("a", float("nan")),), "between -4 and 4"),
    ((("a", 9.0),), "between -4 and 4"),
    ((("../etc", 1.0),), "not a valid name"),
])
def test_request_choices_are_checked(loras, fragment: str) -> None:
    with pytest.raises(InferenceInputError, match=fragment):
        lora.check_choices(loras)


# -- through the pipeline -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> I2VPipeline:
    root = tmp_path_factory.mktemp("loras")
    install(root, "ink", lora_state(10), lora_state(11, "updown", alpha=2.0))
    install(root, "glow", lora_state(12, prefix=""), None)  # high-noise expert only
    pipe = I2VPipeline.load("tiny", device="cpu")
    pipe.loras = lora.LoraLibrary(root)
    return pipe


def _frames(pipe: I2VPipeline, loras=()) -> np.ndarray:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8))
    request = GenerationRequest(image=image, prompt="ink spreads in water", seed=3, num_steps=2, num_frames=1,
                                loras=tuple(loras))
    return pipe.generate(request).frames


def test_requests_with_different_loras_do_not_leak(pipeline: I2VPipeline) -> None:
    bare = _frames(pipeline)
    ink = _frames(pipeline, [("ink", 1.0)])
    glow = _frames(pipeline, [("glow", 0.8)])
    both = _frames(pipeline, [("ink", 1.0), ("glow", 0.8)])
    assert not np.array_equal(ink, bare) and not np.array_equal(glow, bare) and not np.array_equal(ink, glow)
    assert not np.array_equal(both, ink) and not np.array_equal(both, glow)
    # the same requests again, interleaved: each gives what it gave alone
    assert np.array_equal(_frames(pipeline, [("glow", 0.8)]), glow)
    assert np.array_equal(_frames(pipeline), bare)
    assert np.array_equal(_frames(pipeline, [("ink", 1.0)]), ink)
    assert np.array_equal(_frames(pipeline, [("ink", 1.0), ("glow", 0.8)]), both)
    assert np.array_equal(_frames(pipeline, [("ink", 0.0)]), bare)  # strength 0 is no LoRA


def test_unknown_lora_is_refused_before_work(pipeline: I2VPipeline) -> None:
    with pytest.raises(InferenceInputError, match="LoRA 'sepia' is not installed"):
        _frames(pipeline, [("sepia", 1.0)])
    assert np.array_equal(_frames(pipeline, [("ink", 1.0)]), _frames(pipeline, [("ink", 1.0)]))


def test_a_broken_installed_lora_fails_naming_its_keys(pipeline: I2VPipeline) -> None:
    install(pipeline.loras.folder, "broken", {"diffusion_model.head.head.lora_A.weight": torch.zeros(2, DIM)}, None)
    with pytest.raises(WeightsError, match=r"keys not understood: diffusion_model\.head\.head\.lora_A\.weight"):
        _frames(pipeline, [("broken", 1.0)])
