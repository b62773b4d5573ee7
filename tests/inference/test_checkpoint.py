"""Checkpoint loading: every official file layout loads strictly into the same model; errors name what is wrong."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inference.checkpoint import (
    build_on_meta,
    load_dit,
    load_into,
    load_state_dict_file,
    resolve_weight_files,
    weights_status,
)
from inference.configs import A14B, TINY
from inference.dit import WanDiT
from inference.quant import Int8Linear, block_linear_names, quantize_state_dict
from inference.types import WeightsError

PATCH = "patch_embedding.weight"


@pytest.fixture(scope="module")
def float_state() -> dict[str, torch.Tensor]:
    """Random weights in the official float SLA layout (what a bf16 TurboDiffusion .pth holds), as plain tensors."""
    model = load_dit(TINY, None, device="cpu", dtype=torch.float32, expert="low")
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 2, 6, 8, generator=g)
    context = torch.randn(1, TINY.dit.text_len, TINY.dit.text_dim, generator=g)
    return x, torch.tensor([750.0]), context


@pytest.fixture(scope="module")
def reference_output(float_state, inputs) -> torch.Tensor:
    model = WanDiT(TINY.dit, "sla")
    model.load_state_dict(float_state)
    with torch.no_grad():
        return model(*inputs)


def _run(path: Path, inputs, **kwargs) -> torch.Tensor:
    model = load_dit(TINY, path, device="cpu", dtype=torch.float32, **kwargs)
    with torch.no_grad():
        return model(*inputs)


def _shard(state: dict[str, torch.Tensor], folder: Path) -> Path:
    folder.mkdir()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state[k].contiguous() for k in shard_keys}, str(folder / name))
        weight_map.update(dict.fromkeys(shard_keys, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_all_float_layouts_load_strictly_and_agree(tmp_path, float_state, inputs, reference_output, caplog) -> None:
    flat = dict(float_state)
    flat[PATCH] = float_state[PATCH].reshape(float_state[PATCH].shape[0], -1)
    assert flat[PATCH].shape == (64, 144)
    wrapped = {k.replace("self_attn.", "self_attn._checkpoint_wrapped_module."): v for k, v in float_state.items()}
    bf16 = {k: v.bfloat16() for k, v in float_state.items()}
    # A training checkpoint: keys under `net.`, nested in {"state_dict": ...}.
    training = {"state_dict": {f"net.{k}": v for k, v in float_state.items()}}

    files = {
        "plain.pth": float_state,
        "flat_patch.pth": flat,
        "wrapped.pth": wrapped,
        "training.pth": training,
        "single.safetensors": float_state,
    }
    for name, state in files.items():
        if name.endswith(".pth"):
            torch.save(state, tmp_path / name)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    paths = [tmp_path / name for name in files] + [_shard(float_state, tmp_path / "high_noise_model")]

    with caplog.at_level(logging.INFO, logger="inference.checkpoint"):
        for path in paths:
            model = load_dit(TINY, path, device="cpu", dtype=torch.float32)
            loaded = model.state_dict()
            assert set(loaded) == set(float_state)
            assert all(torch.equal(loaded[k], float_state[k]) for k in float_state), path
            with torch.no_grad():
                # Same weights bit for bit; only the memory alignment of the loaded tensors (which can pick another
                # SIMD path in the CPU GEMM) may change the last bits.
                torch.testing.assert_close(model(*inputs), reference_output, atol=1e-5, rtol=1e-5, msg=str(path))
    assert "_checkpoint_wrapped_module." in caplog.text
    assert "reshaping flattened patch_embedding.weight" in caplog.text
    assert "training prefix 'net.'" in caplog.text

    # A bf16 file (how the checkpoints ship) loads too and gives nearly the same numbers.
    torch.save(bf16, tmp_path / "bf16.pth")
    got = _run(tmp_path / "bf16.pth", inputs)
    assert (got - reference_output).norm() / reference_output.norm() < 2e-2


def test_quantized_checkpoint_loads_as_int8_and_matches_load_time_quantization(tmp_path, float_state, inputs) -> None:
    model = build_on_meta(lambda: WanDiT(TINY.dit, "sla"))
    quant_state = quantize_state_dict(float_state, block_linear_names(model))
    torch.save(quant_state, tmp_path / "tiny-quant.pth")
    torch.save(float_state, tmp_path / "tiny.pth")

    loaded = load_dit(TINY, tmp_path / "tiny-quant.pth", device="cpu", dtype=torch.float32)
    assert isinstance(loaded.blocks[1].cross_attn.o, Int8Linear)
    assert not isinstance(loaded.blocks[1].self_attn.attn_op.local_attn.proj_l, Int8Linear)
    assert loaded.blocks[1].cross_attn.o.int8_weight.dtype == torch.int8
    at_load = load_dit(TINY, tmp_path / "tiny.pth", device="cpu", dtype=torch.float32, quantize=True)
    file_state, load_state = loaded.state_dict(), at_load.state_dict()
    assert set(file_state) == set(load_state) == set(quant_state)
    assert all(torch.equal(file_state[k], load_state[k]) for k in file_state)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), at_load(*inputs), atol=1e-5, rtol=1e-5)


def test_attention_choice_against_checkpoint_contents(tmp_path, float_state, inputs) -> None:
    torch.save(float_state, tmp_path / "sla.pth")
    no_sla = {k: v for k, v in float_state.items() if "proj_l" not in k}
    torch.save(no_sla, tmp_path / "official.pth")

    dense_from_sla = load_dit(TINY, tmp_path / "sla.pth", device="cpu", dtype=torch.float32, attention="dense")
    assert dense_from_sla.attention == ["dense", "dense"]
    assert load_dit(TINY, tmp_path / "sla.pth", device="cpu", dtype=torch.float32, attention="auto").attention == [
        "sla",
        "sla",
    ]
    assert load_dit(TINY, tmp_path / "official.pth", device="cpu", dtype=torch.float32, attention="auto").attention == [
        "dense",
        "dense",
    ]
    with pytest.raises(WeightsError, match=r"proj_l.*attention='dense'"):
        load_dit(TINY, tmp_path / "official.pth", device="cpu", dtype=torch.float32, attention="sla")


def test_random_weights_are_seeded_per_expert() -> None:
    high = load_dit(TINY, None, device="cpu", dtype=torch.float32, expert="high").state_dict()
    again = load_dit(TINY, None, device="cpu", dtype=torch.float32, expert="high").state_dict()
    low = load_dit(TINY, None, device="cpu", dtype=torch.float32, expert="low").state_dict()
    assert all(torch.equal(high[k], again[k]) for k in high)
    assert not torch.equal(high["blocks.0.ffn.0.weight"], low["blocks.0.ffn.0.weight"])


# ----------------------------------------------------------------------------------------------------------------


def _load_tiny(state: dict[str, torch.Tensor]) -> None:
    model = build_on_meta(lambda: WanDiT(TINY.dit, "sla"))
    load_into(model, state, what="tiny test weights")


def test_missing_key_is_named(float_state) -> None:
    state = {k: v for k, v in float_state.items() if k != "blocks.1.norm3.bias"}
    with pytest.raises(WeightsError, match=r"tiny test weights.*1 missing keys: blocks\.1\.norm3\.bias"):
        _load_tiny(state)


def test_unexpected_key_is_named(float_state) -> None:
    state = dict(float_state, **{"blocks.0.extra.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match=r"1 unexpected keys: blocks\.0\.extra\.weight"):
        _load_tiny(state)


def test_wrong_shape_is_named_with_both_shapes(float_state) -> None:
    state = dict(float_state, **{"head.modulation": torch.zeros(1, 3, 64)})
    with pytest.raises(WeightsError, match=r"head\.modulation \(checkpoint \[1, 3, 64\], model \[1, 2, 64\]\)"):
        _load_tiny(state)


def test_long_key_lists_are_truncated(float_state) -> None:
    state = {k: v for k, v in float_state.items() if not k.startswith("blocks.")}
    with pytest.raises(WeightsError, match=r"missing keys: .* and \d+ more") as err:
        _load_tiny(state)
    assert len(str(err.value)) < 2000


def test_missing_and_unreadable_files_are_named(tmp_path) -> None:
    with pytest.raises(WeightsError, match=r"nothere\.pth"):
        load_state_dict_file(tmp_path / "nothere.pth")
    with pytest.raises(WeightsError, match=r"nothere\.pth"):
        load_dit(TINY, tmp_path / "nothere.pth", device="cpu", dtype=torch.float32)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"broken\.pth"):
        load_state_dict_file(tmp_path / "broken.pth")
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(WeightsError, match=r"gone\.safetensors"):
        load_state_dict_file(folder)


# ----------------------------------------------------------------------------------------------------------------


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_weights_status_lists_missing_files_by_configured_name(tmp_path) -> None:
    status = weights_status(A14B, tmp_path)
    assert status["installed"] is False
    assert status["missing"] == [
        A14B.high_noise_file,
        A14B.low_noise_file,
        A14B.vae_file,
        A14B.text_encoder_file,
        A14B.tokenizer_dir,
    ]
    assert weights_status(A14B, None)["installed"] is False
    assert weights_status(TINY, None) == {"installed": True, "missing": [], "paths": {}}

    for name in (A14B.high_noise_file, A14B.low_noise_file, A14B.vae_file, A14B.text_encoder_file):
        _touch(tmp_path / name)
    _touch(tmp_path / A14B.tokenizer_dir / "spiece.model")
    status = weights_status(A14B, tmp_path)
    assert status["installed"] is True and status["missing"] == []
    assert status["paths"]["high"] == tmp_path / A14B.high_noise_file


def test_weights_status_accepts_unquantized_files_and_official_folders(tmp_path) -> None:
    _touch(tmp_path / "TurboWan2.2-I2V-A14B-high-720P.pth")
    _touch(tmp_path / "low_noise_model" / "diffusion_pytorch_model-00001-of-00002.safetensors")
    paths = resolve_weight_files(A14B, tmp_path)
    assert paths["high"] == tmp_path / "TurboWan2.2-I2V-A14B-high-720P.pth"
    assert paths["low"] == tmp_path / "low_noise_model"
    assert weights_status(A14B, tmp_path)["missing"] == [A14B.vae_file, A14B.text_encoder_file, A14B.tokenizer_dir]
