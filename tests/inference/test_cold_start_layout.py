"""bench.cold_start writes its random weights in the layout the worker reads (inference/weights.md), so its cold
start loads what a real deployment loads: checked at the tiny size, through the worker's own loaders."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.cold_start import write_weights
from inference.checkpoint import load_dit, resolve_weight_files
from inference.configs import TINY
from inference.quant import Int8Linear
from inference.text_encoder import load_text_encoder
from inference.vae import load_vae


def test_written_weights_are_found_and_load_strictly(tmp_path: Path) -> None:
    sizes = write_weights(tmp_path, TINY.name, device="cpu")
    assert set(sizes) == {TINY.high_noise_file, TINY.low_noise_file, TINY.vae_file, TINY.text_encoder_file}
    paths = resolve_weight_files(TINY, tmp_path)
    assert paths["high"] == tmp_path / TINY.high_noise_file and paths["low"] == tmp_path / TINY.low_noise_file
    assert all(paths[key] is not None for key in ("vae", "text", "tokenizer"))
    for expert in ("high", "low"):
        dit = load_dit(TINY, paths[expert], device="cpu", dtype=torch.float32, expert=expert)
        assert isinstance(dit.blocks[0].self_attn.q, Int8Linear)  # the "-quant" layout, as configured
    load_vae(TINY, paths["vae"])
    assert load_text_encoder(TINY, tmp_path).encode(["a red boat"]).shape == (1, TINY.text.text_len, TINY.text.dim)
