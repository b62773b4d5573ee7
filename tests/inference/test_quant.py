"""Int8Linear and the conversion of a float DiT into the "-quant" layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference.checkpoint import load_dit
from inference.configs import TINY
from inference.dit import WanDiT
from inference.quant import Int8Linear, block_linear_names, quantize_model_linears, quantize_state_dict
from turbokernels import reference


def test_int8_linear_layer_is_close_to_its_float_linear() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(320, 200)
    layer = Int8Linear.from_linear(linear)
    assert sorted(layer.state_dict()) == ["bias", "int8_weight", "scale"]
    assert layer.int8_weight.dtype == torch.int8 and layer.int8_weight.shape == (200, 320)
    assert layer.scale.dtype == torch.float32 and layer.scale.shape == (2, 3)
    x = torch.randn(4, 50, 320)
    with torch.no_grad():
        exact, got = linear(x), layer(x)
    assert got.shape == exact.shape == (4, 50, 200)
    # Uniform weights and Gaussian activations: per-tile rounding noise ~1% relative (see test_reference_ops).
    assert (got - exact).norm() / exact.norm() < 2e-2


def test_quantize_model_linears_converts_block_linears_except_proj_l() -> None:
    model = WanDiT(TINY.dit, "sla")
    names = quantize_model_linears(model)
    per_block = {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o"}
    per_block |= {p.replace("self", "cross") for p in per_block} | {"ffn.0", "ffn.2"}
    assert set(names) == {f"blocks.{n}.{p}" for n in range(TINY.dit.num_layers) for p in per_block}
    int8_modules = {name for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    assert int8_modules == set(names)
    assert isinstance(model.blocks[0].self_attn.attn_op.local_attn.proj_l, nn.Linear)
    assert isinstance(model.text_embedding[0], nn.Linear) and isinstance(model.head.head, nn.Linear)
    assert block_linear_names(model) == []  # nothing float is left to quantize


def test_quantize_only_named_layers_and_reject_unknown() -> None:
    model = WanDiT(TINY.dit, "dense")
    assert quantize_model_linears(model, only=["blocks.1.ffn.0"]) == ["blocks.1.ffn.0"]
    assert isinstance(model.blocks[1].ffn[0], Int8Linear) and isinstance(model.blocks[1].ffn[2], nn.Linear)
    with pytest.raises(ValueError, match=r"head\.head"):
        quantize_model_linears(model, only=["head.head"])


def test_quantized_state_dict_matches_quantized_modules() -> None:
    model = load_dit(TINY, None, device="cpu", dtype=torch.float32)
    float_state = model.state_dict()
    names = block_linear_names(model)
    state = quantize_state_dict(float_state, names)
    quantize_model_linears(model)
    module_state = model.state_dict()
    assert set(state) == set(module_state)
    for key in state:
        assert torch.equal(state[key], module_state[key]), key
    q, s = reference.quantize_int8_blockwise(float_state["blocks.0.ffn.0.weight"])
    assert torch.equal(state["blocks.0.ffn.0.int8_weight"], q) and torch.equal(state["blocks.0.ffn.0.scale"], s)


def test_quantized_model_output_close_to_float_model() -> None:
    float_model = load_dit(TINY, None, device="cpu", dtype=torch.float32)
    quant_model = load_dit(TINY, None, device="cpu", dtype=torch.float32, quantize=True)
    assert isinstance(quant_model.blocks[0].ffn[0], Int8Linear)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 36, 2, 8, 8, generator=g), torch.tensor([500.0])
    context = torch.randn(1, TINY.dit.text_len, TINY.dit.text_dim, generator=g)
    with torch.no_grad():
        ref, got = float_model(x, t, context), quant_model(x, t, context)
    # 16 quantized linears in a row, each ~1% noise; the residual stream keeps the total a few percent.
    assert (got - ref).norm() / ref.norm() < 5e-2
