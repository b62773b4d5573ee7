"""umT5 text encoder: Wan key mapping, the maths Wan's checkpoint expects, prompt cleaning, tokenizers, loading."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch
from transformers import UMT5EncoderModel

from inference.configs import A14B, TINY
from inference.text_encoder import (
    TextEncoder,
    build_umt5,
    clean_prompt,
    load_text_encoder,
    toy_tokenizer,
    umt5_config,
    wan_shapes,
    wan_state_dict,
)
from inference.types import WeightsError

LONG_PROMPT = (
    "A young woman with long red hair walks slowly along a quiet beach at sunset, the camera tracking her "
    "from the side while gentle waves roll onto the sand and golden light fills the sky"
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  a   cat\n\tsits  on\r\nthe mat  ", "a cat sits on the mat"),
        ("salt &amp; pepper", "salt & pepper"),
        ("&amp;lt;b&amp;gt; twice-escaped", "<b> twice-escaped"),  # unescaped twice
        ("cafÃ© au lait", "café au lait"),  # mojibake repaired by ftfy
        ("", ""),
        ("\u00a0non\u00a0breaking\u3000spaces ", "non breaking spaces"),
    ],
)
def test_clean_prompt(raw: str, clean: str) -> None:
    assert clean_prompt(raw) == clean


def _official_umt5_xxl_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of `models_t5_umt5-xxl-enc-bf16.pth` (spec section 5)."""
    dim, ffn, heads, buckets = 4096, 10240, 64, 32
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (256_384, dim)}
    for i in range(24):
        p = f"blocks.{i}."
        shapes |= {
            p + "norm1.weight": (dim,),
            p + "attn.q.weight": (dim, dim),
            p + "attn.k.weight": (dim, dim),
            p + "attn.v.weight": (dim, dim),
            p + "attn.o.weight": (dim, dim),
            p + "norm2.weight": (dim,),
            p + "ffn.gate.0.weight": (ffn, dim),
            p + "ffn.fc1.weight": (ffn, dim),
            p + "ffn.fc2.weight": (dim, ffn),
            p + "pos_embedding.embedding.weight": (buckets, heads),
        }
    shapes["norm.weight"] = (dim,)
    return shapes


def test_a14b_mapping_covers_the_official_wan_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(A14B.text))
    got = {key: tuple(shape) for key, shape in wan_shapes(model).items()}
    assert got == _official_umt5_xxl_shapes()
    # Every HF tensor is reached by exactly one Wan key (the embedding's second name is the same tensor).
    hf_keys = set(model.state_dict()) - {"encoder.embed_tokens.weight"}
    assert len(hf_keys) == len(got)


def test_umt5_settings_match_wan() -> None:
    cfg = umt5_config(A14B.text)
    assert cfg.dense_act_fn == "gelu_new" and cfg.is_gated_act  # tanh GELU on the gate branch
    assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers) == (4096, 64, 64, 10240, 24)
    assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance) == (32, 128)
    assert cfg.layer_norm_epsilon == 1e-6 and cfg.dropout_rate == 0.0


# ---- an independent transcription of Wan's encoder maths, to check the HF model computes the same thing ----


def _bucket(rel: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    half = num_buckets // 2
    out = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    large = (
        exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)).long()
    )
    return out + torch.where(dist < exact, dist, large.clamp(max=half - 1))


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _wan_reference(sd: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    b, n = ids.shape
    x = sd["token_embedding.weight"][ids]
    d = x.shape[-1] // heads
    buckets = _bucket(torch.arange(n)[None, :] - torch.arange(n)[:, None])
    masked = torch.zeros(b, 1, 1, n).masked_fill(mask[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    layers = sum(1 for k in sd if k.endswith("attn.q.weight"))
    for i in range(layers):
        p = f"blocks.{i}."
        h = _rms(x, sd[p + "norm1.weight"])
        q, k, v = ((h @ sd[p + f"attn.{m}.weight"].T).view(b, n, heads, d).transpose(1, 2) for m in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]
        attn = torch.softmax(q @ k.transpose(-1, -2) + bias + masked, dim=-1)  # T5: no 1/sqrt(d)
        x = x + (attn @ v).transpose(1, 2).reshape(b, n, -1) @ sd[p + "attn.o.weight"].T
        h = _rms(x, sd[p + "norm2.weight"])
        gated = _gelu_tanh(h @ sd[p + "ffn.gate.0.weight"].T) * (h @ sd[p + "ffn.fc1.weight"].T)
        x = x + gated @ sd[p + "ffn.fc2.weight"].T
    return _rms(x, sd["norm.weight"])


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    return load_text_encoder(TINY, None)


def test_relative_position_buckets_match_wan_at_long_range(tiny: TextEncoder) -> None:
    attention = tiny.model.encoder.block[1].layer[0].SelfAttention
    n = 300  # beyond max_distance 128 on both sides
    hf = attention.compute_bias(n, n)[0]
    table = wan_state_dict(tiny.model)["blocks.1.pos_embedding.embedding.weight"]
    ours = table[_bucket(torch.arange(n)[None, :] - torch.arange(n)[:, None])].permute(2, 0, 1)
    torch.testing.assert_close(hf, ours, atol=0, rtol=0)


def test_hf_encoder_computes_wans_maths(tiny: TextEncoder) -> None:
    ids, mask = tiny.token_ids([LONG_PROMPT, "a red car"])
    assert mask.sum(1).tolist()[1] < ids.shape[1]  # the second prompt is padded
    sd = {k: v.float() for k, v in wan_state_dict(tiny.model).items()}
    ref = _wan_reference(sd, ids, mask, heads=TINY.text.num_heads)
    out = tiny.encode([LONG_PROMPT, "a red car"])
    for row, length in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(out[row, :length], ref[row, :length], atol=1e-4, rtol=1e-4)


def test_encode_shape_and_zero_padding(tiny: TextEncoder) -> None:
    prompts = ["a dog runs", LONG_PROMPT]
    out = tiny.encode(prompts)
    assert out.shape == (2, TINY.text.text_len, TINY.text.dim)
    lengths = tiny.token_ids(prompts)[1].sum(1).tolist()
    for row, length in enumerate(lengths):
        assert (out[row, :length].abs().sum(-1) > 0).all()
        assert (out[row, length:] == 0).all()


def test_output_does_not_depend_on_the_rest_of_the_batch(tiny: TextEncoder) -> None:
    alone = tiny.encode(["a dog runs"])
    batched = tiny.encode(["a dog runs", LONG_PROMPT])
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)


def test_long_prompts_are_truncated_to_text_len(tiny: TextEncoder) -> None:
    ids, mask = tiny.token_ids([" ".join([LONG_PROMPT] * 5)])
    assert ids.shape == (1, TINY.text.text_len) and mask.all()
    assert ids[0, -1].item() == tiny.tokenizer.eos_token_id


def test_toy_tokenizer_is_deterministic_and_in_vocab() -> None:
    toy_tokenizer.cache_clear()
    first = toy_tokenizer(TINY.text.vocab_size)(LONG_PROMPT + " ✨ 42%")["input_ids"]
    toy_tokenizer.cache_clear()
    tok = toy_tokenizer(TINY.text.vocab_size)
    assert tok(LONG_PROMPT + " ✨ 42%")["input_ids"] == first
    assert len(tok) <= TINY.text.vocab_size and max(first) < TINY.text.vocab_size
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert first[-1] == 1
    assert tok.convert_ids_to_tokens(tok("the dog")["input_ids"]) == ["\u2581the", "\u2581dog", "</s>"]


def test_wan_format_checkpoint_loads_and_gives_identical_outputs(tiny: TextEncoder, tmp_path) -> None:
    state = wan_state_dict(tiny.model)
    assert set(state) == set(wan_shapes(tiny.model))
    torch.save(state, tmp_path / TINY.text_encoder_file)
    loaded = load_text_encoder(TINY, tmp_path, device="cpu", dtype=torch.float32)
    prompts = ["a dog runs", LONG_PROMPT]
    torch.testing.assert_close(loaded.encode(prompts), tiny.encode(prompts), atol=0, rtol=0)
    assert loaded.model.encoder.embed_tokens.weight is loaded.model.shared.weight


def test_seeded_random_encoders_agree() -> None:
    a, b = build_umt5(TINY.text), build_umt5(TINY.text)
    for key, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[key]), key


@pytest.mark.parametrize("broken", ["missing", "unexpected", "shape"])
def test_bad_checkpoint_raises_weights_error_naming_the_wan_key(tiny: TextEncoder, tmp_path, broken: str) -> None:
    state = dict(wan_state_dict(tiny.model))
    if broken == "missing":
        del state["blocks.1.ffn.fc1.weight"]
        key = "blocks.1.ffn.fc1.weight"
    elif broken == "unexpected":
        state["blocks.7.attn.q.weight"] = state["blocks.0.attn.q.weight"]
        key = "blocks.7.attn.q.weight"
    else:
        state["norm.weight"] = torch.ones(7)
        key = "norm.weight"
    torch.save(state, tmp_path / TINY.text_encoder_file)
    with pytest.raises(WeightsError, match=re.escape(key)):
        load_text_encoder(TINY, tmp_path)


def test_missing_tokenizer_folder_raises_weights_error_naming_it(tmp_path) -> None:
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "google" / "umt5-xxl"))):
        load_text_encoder(A14B, tmp_path)  # fails before building the 5.7B model
    real_tiny = replace(TINY, random_weights=False, tokenizer_dir="tok")
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "tok"))):
        load_text_encoder(real_tiny, tmp_path)
    (tmp_path / "tok").mkdir()
    with pytest.raises(WeightsError, match=r"neither tokenizer\.json nor spiece\.model"):
        load_text_encoder(real_tiny, tmp_path)


def test_tokenizer_folder_is_read_from_local_files(tiny: TextEncoder, tmp_path) -> None:
    real_tiny = replace(TINY, random_weights=False, tokenizer_dir="google/umt5-xxl")
    tiny.tokenizer.save_pretrained(tmp_path / "google" / "umt5-xxl")
    torch.save(wan_state_dict(tiny.model), tmp_path / TINY.text_encoder_file)
    loaded = load_text_encoder(real_tiny, tmp_path)
    assert loaded.tokenizer is not tiny.tokenizer
    torch.testing.assert_close(loaded.encode([LONG_PROMPT]), tiny.encode([LONG_PROMPT]), atol=0, rtol=0)


def test_token_ids_beyond_the_embedding_raise_weights_error(tiny: TextEncoder) -> None:
    small = TextEncoder(model=tiny.model, tokenizer=tiny.tokenizer, config=replace(TINY.text, vocab_size=50))
    with pytest.raises(WeightsError, match="beyond the text encoder's 50 embeddings"):
        small.encode([LONG_PROMPT])
