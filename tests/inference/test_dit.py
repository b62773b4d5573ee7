"""WanDiT: the official key set and shapes at A14B size (on the meta device), and the forward pass at toy size."""

from __future__ import annotations

import math

import pytest
import torch

from inference.checkpoint import build_on_meta, load_dit
from inference.configs import A14B, TINY
from inference.dit import WanDiT
from inference.quant import quantize_model_linears

# Numbers from the spec's table (section 2), written out here rather than read from the model's config.
DIM, FFN, HEAD_DIM, LAYERS, FREQ, TEXT, IN, OUT = 5120, 13824, 128, 40, 256, 4096, 36, 16


def official_keys(*, sla: bool, quantized: bool) -> dict[str, tuple[int, ...]]:
    """The spec's "Official key names" list expanded for every block (plus TurboDiffusion's additions)."""
    keys: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (DIM, IN, 1, 2, 2),
        "patch_embedding.bias": (DIM,),
        "text_embedding.0.weight": (DIM, TEXT),
        "text_embedding.0.bias": (DIM,),
        "text_embedding.2.weight": (DIM, DIM),
        "text_embedding.2.bias": (DIM,),
        "time_embedding.0.weight": (DIM, FREQ),
        "time_embedding.0.bias": (DIM,),
        "time_embedding.2.weight": (DIM, DIM),
        "time_embedding.2.bias": (DIM,),
        "time_projection.1.weight": (6 * DIM, DIM),
        "time_projection.1.bias": (6 * DIM,),
        "head.head.weight": (OUT * 4, DIM),
        "head.head.bias": (OUT * 4,),
        "head.modulation": (1, 2, DIM),
    }

    def linear(name: str, out_f: int, in_f: int) -> None:
        if quantized:
            keys[f"{name}.int8_weight"] = (out_f, in_f)
            keys[f"{name}.scale"] = (math.ceil(out_f / 128), math.ceil(in_f / 128))
        else:
            keys[f"{name}.weight"] = (out_f, in_f)
        keys[f"{name}.bias"] = (out_f,)

    for n in range(LAYERS):
        block = f"blocks.{n}"
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                linear(f"{block}.{attn}.{proj}", DIM, DIM)
            keys[f"{block}.{attn}.norm_q.weight"] = (DIM,)
            keys[f"{block}.{attn}.norm_k.weight"] = (DIM,)
        keys[f"{block}.norm3.weight"] = (DIM,)
        keys[f"{block}.norm3.bias"] = (DIM,)
        linear(f"{block}.ffn.0", FFN, DIM)
        linear(f"{block}.ffn.2", DIM, FFN)
        keys[f"{block}.modulation"] = (1, 6, DIM)
        if sla:
            keys[f"{block}.self_attn.attn_op.local_attn.proj_l.weight"] = (HEAD_DIM, HEAD_DIM)
            keys[f"{block}.self_attn.attn_op.local_attn.proj_l.bias"] = (HEAD_DIM,)
    return keys


def model_keys(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize(("attention", "quantized"), [("dense", False), ("sla", False), ("sla", True), ("dense", True)])
def test_a14b_has_exactly_the_official_keys_and_shapes(attention: str, quantized: bool) -> None:
    model = build_on_meta(lambda: WanDiT(A14B.dit, attention))
    if quantized:
        quantize_model_linears(model)
    got = model_keys(model)
    expected = official_keys(sla=attention == "sla", quantized=quantized)
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    if quantized:
        state = model.state_dict()
        assert state["blocks.3.ffn.2.int8_weight"].dtype == torch.int8
        assert state["blocks.3.ffn.2.scale"].dtype == torch.float32
    if attention == "sla":
        assert model.state_dict()["blocks.0.self_attn.attn_op.local_attn.proj_l.weight"].dtype == torch.float32


def test_per_layer_attention_puts_proj_l_only_in_sla_layers() -> None:
    model = WanDiT(TINY.dit, ["dense", "sla"])
    proj_l = sorted(k for k in model.state_dict() if "proj_l" in k)
    assert proj_l == [f"blocks.1.self_attn.attn_op.local_attn.proj_l.{p}" for p in ("bias", "weight")]
    with pytest.raises(ValueError, match="layer 1"):
        WanDiT(TINY.dit, ["dense", "flash"])
    with pytest.raises(ValueError, match="lists 1 layers"):
        WanDiT(TINY.dit, ["dense"])


# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> WanDiT:
    return load_dit(TINY, None, device="cpu", dtype=torch.float32)


def _inputs(batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 36, 3, 8, 12, generator=g)
    t = torch.full((batch,), 900.0)
    context = torch.randn(batch, TINY.dit.text_len, TINY.dit.text_dim, generator=g)
    return x, t, context


def test_forward_shape_and_dependence_on_every_input(tiny: WanDiT) -> None:
    x, t, context = _inputs()
    with torch.no_grad():
        out = tiny(x, t, context)
        assert out.shape == (1, 16, 3, 8, 12) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and out.std() > 0.1
        assert (tiny(x, t * 0.5, context) - out).abs().max() > 1e-3
        assert (tiny(x, t, context * 0.5) - out).abs().max() > 1e-3
        assert (tiny(x * 0.5, t, context) - out).abs().max() > 1e-3


def test_batch_items_are_independent(tiny: WanDiT) -> None:
    x, t, context = _inputs(batch=2)
    t = torch.tensor([900.0, 300.0])
    with torch.no_grad():
        both = tiny(x, t, context)
        for i in range(2):
            one = tiny(x[i : i + 1], t[i : i + 1], context[i : i + 1])
            torch.testing.assert_close(both[i : i + 1], one, atol=1e-5, rtol=1e-5)


def test_self_attention_sees_token_positions(tiny: WanDiT) -> None:
    """RoPE makes the output depend on where a token sits: swapping two latent frames does not just swap outputs."""
    x, t, context = _inputs()
    with torch.no_grad():
        out = tiny(x, t, context)
        swapped = tiny(x[:, :, [1, 0, 2]], t, context)
    assert (swapped[:, :, [1, 0, 2]] - out).abs().max() > 1e-3


def test_unpatchify_puts_channels_last_within_each_patch(tiny: WanDiT) -> None:
    f, h, w, c = 2, 3, 4, 16
    tokens = torch.arange(f * h * w * 4 * c, dtype=torch.float32).reshape(1, f * h * w, 4 * c)
    got = tiny.unpatchify(tokens, (f, h, w), batch=1)
    # upstream: view(f, h, w, pt, ph, pw, c) then einsum "fhwpqrc->cfphqwr"
    expected = torch.einsum("fhwpqrc->cfphqwr", tokens[0].view(f, h, w, 1, 2, 2, c)).reshape(c, f, 2 * h, 2 * w)
    assert torch.equal(got[0], expected)


def test_sla_at_topk_one_with_zero_proj_l_equals_dense_model() -> None:
    sla = load_dit(TINY, None, device="cpu", dtype=torch.float32, attention="sla")
    dense = load_dit(TINY, None, device="cpu", dtype=torch.float32, attention="dense")
    sla.set_sla_topk(1.0)
    for block in sla.blocks:
        block.self_attn.attn_op.local_attn.proj_l.weight.zero_()
        block.self_attn.attn_op.local_attn.proj_l.bias.zero_()
    x, t, context = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(sla(x, t, context), dense(x, t, context), atol=1e-4, rtol=1e-4)
        sla.set_sla_topk(0.1)
        assert (sla(x, t, context) - dense(x, t, context)).abs().max() > 1e-3


def test_bf16_compute_stays_close_to_fp32(tiny: WanDiT) -> None:
    half = load_dit(TINY, None, device="cpu", dtype=torch.bfloat16)
    assert half.patch_embedding.weight.dtype == torch.bfloat16
    assert half.blocks[0].modulation.dtype == torch.float32
    assert half.blocks[0].self_attn.norm_q.weight.dtype == torch.float32
    assert half.blocks[0].norm3.bias.dtype == torch.float32
    assert half.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert half.blocks[0].self_attn.attn_op.local_attn.proj_l.weight.dtype == torch.float32
    x, t, context = _inputs()
    with torch.no_grad():
        ref, got = tiny(x, t, context), half(x, t, context)
    assert got.dtype == torch.float32
    assert (got - ref).norm() / ref.norm() < 5e-2


def test_rejects_inputs_of_the_wrong_shape(tiny: WanDiT) -> None:
    x, t, context = _inputs()
    with pytest.raises(ValueError, match="36"):
        tiny(x[:, :20], t, context)
    with pytest.raises(ValueError, match="h=7"):
        tiny(x[:, :, :, :7], t, context)
    with pytest.raises(ValueError, match="context"):
        tiny(x, t, context[..., :8])


def test_first_blocks_runs_the_leading_blocks_only_and_only_inside() -> None:
    model = load_dit(TINY, None, device="cpu", dtype=torch.float32).eval()
    x = torch.randn(1, TINY.dit.in_dim, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t, context = torch.tensor([500.0]), torch.randn(1, 8, TINY.dit.text_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(x, t, context)
        with model.first_blocks(1):
            first = model(x, t, context)
        after = model(x, t, context)
        blocks = model.blocks
        model.blocks = torch.nn.ModuleList(blocks[:1])
        one_block_model = model(x, t, context)
        model.blocks = blocks
    torch.testing.assert_close(first, one_block_model, rtol=0, atol=0)
    assert not torch.allclose(first, whole)
    torch.testing.assert_close(after, whole, rtol=0, atol=0)
