"""umT5-XXL text encoder (encoder only) on `transformers`' UMT5EncoderModel, loading Wan's checkpoint keys.

Wan ships the encoder as `models_t5_umt5-xxl-enc-bf16.pth` with its own key names (spec section 5); they map one
to one onto the Hugging Face encoder, which already matches Wan's maths: gated FFN with the tanh GELU
("gated-gelu" -> gelu_new), unscaled attention, a bidirectional relative position bias per layer (32 buckets,
max distance 128, umT5 style), RMS layer norms with eps 1e-6 and no biases.

The tokenizer of the real model is `google/umt5-xxl` (sentencepiece) read from the weights folder, never from a
hub. The toy model gets a small built-in tokenizer made in memory, so it needs no files at all.
"""

from __future__ import annotations

import functools
import html
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import ftfy
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from inference.configs import ModelConfig, TextEncoderConfig
from inference.types import WeightsError

# Seed of the random weights used when no checkpoint is given (tiny model, tests).
RANDOM_WEIGHTS_SEED = 20250729
# Below this many parameters random weights are drawn on the CPU (identical on every device).
_SMALL_MODEL_PARAMS = 200_000_000

# Wan key inside `blocks.N.` -> Hugging Face key inside `encoder.block.N.`.
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU-gated branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_TOP_KEYS = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: repair mojibake, unescape HTML twice, collapse whitespace, strip."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def umt5_config(cfg: TextEncoderConfig) -> UMT5Config:
    if cfg.dim % cfg.num_heads:
        raise ValueError(f"text encoder dim {cfg.dim} is not divisible by {cfg.num_heads} heads")
    return UMT5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.dim,
        d_kv=cfg.dim // cfg.num_heads,
        d_ff=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )


def wan_to_hf_key(key: str, num_layers: int) -> str:
    """Hugging Face encoder name of a Wan checkpoint key; WeightsError for a key the encoder has no place for."""
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    match = _BLOCK_KEY.fullmatch(key)
    if match and int(match.group(1)) < num_layers and match.group(2) in _BLOCK_KEYS:
        return f"encoder.block.{match.group(1)}.{_BLOCK_KEYS[match.group(2)]}"
    raise WeightsError(f"unexpected key {key!r} in the text encoder checkpoint (umT5 with {num_layers} layers)")


def wan_key_names(num_layers: int) -> list[str]:
    """Every key of a Wan umT5 encoder checkpoint, in checkpoint order."""
    keys = ["token_embedding.weight"]
    for i in range(num_layers):
        keys += [f"blocks.{i}.{k}" for k in _BLOCK_KEYS]
    return [*keys, "norm.weight"]


def wan_shapes(model: UMT5EncoderModel) -> dict[str, torch.Size]:
    """Wan key -> the shape the model needs for it."""
    hf = model.state_dict(keep_vars=True)
    return {k: hf[wan_to_hf_key(k, model.config.num_layers)].shape for k in wan_key_names(model.config.num_layers)}


def wan_state_dict(model: UMT5EncoderModel) -> dict[str, torch.Tensor]:
    """The model's weights under Wan's key names (what `models_t5_umt5-xxl-enc-bf16.pth` holds)."""
    hf = model.state_dict()
    return {k: hf[wan_to_hf_key(k, model.config.num_layers)] for k in wan_key_names(model.config.num_layers)}


def _check_wan_state(sd: dict[str, torch.Tensor], model: UMT5EncoderModel, source: str) -> None:
    expected = wan_shapes(model)
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        raise WeightsError(f"{source}: unexpected keys {unexpected[:5]} ({len(unexpected)} in all)")
    missing = [k for k in expected if k not in sd]
    if missing:
        raise WeightsError(f"{source}: missing keys {missing[:5]} ({len(missing)} in all)")
    for key, shape in expected.items():
        if tuple(sd[key].shape) != tuple(shape):
            raise WeightsError(f"{source}: {key} has shape {tuple(sd[key].shape)}, the model needs {tuple(shape)}")


def load_wan_weights(model: UMT5EncoderModel, sd: dict[str, torch.Tensor], *, source: str) -> None:
    """Assign a Wan-format state dict to the encoder's parameters (checkpoint.load_into: the tensors are taken as
    they are); every mismatch raises WeightsError naming the Wan key."""
    _check_wan_state(sd, model, source)
    mapped = {wan_to_hf_key(k, model.config.num_layers): v for k, v in sd.items()}
    # The HF encoder lists its embedding twice (shared and encoder.embed_tokens); give both the same tensor.
    mapped["encoder.embed_tokens.weight"] = mapped["shared.weight"]
    from inference.checkpoint import load_into

    load_into(model, mapped, what=source, strict=True)
    model.encoder.set_input_embeddings(model.shared)  # keep the two names on one tensor


def random_wan_state_dict(
    cfg: TextEncoderConfig,
    *,
    seed: int = RANDOM_WEIGHTS_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Seeded random weights under Wan's key names, scaled so activations stay O(1) through the layers.

    Small models draw on the CPU so every device sees the same numbers; umT5-XXL draws on `device` in `dtype`
    tensor by tensor, so it never exists in fp32 or on the host.
    """
    with torch.device("meta"):
        shapes = wan_shapes(UMT5EncoderModel(umt5_config(cfg)))
    total = sum(math.prod(shape) for shape in shapes.values())
    draw_device = torch.device("cpu") if total < _SMALL_MODEL_PARAMS else torch.device(device)
    generator = torch.Generator(device=draw_device)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        # One stream per key: a tensor's values do not depend on the order or number of the others.
        generator.manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        value = torch.randn(shape, generator=generator, device=draw_device)
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
            value = 1.0 + 0.1 * value
        elif key.endswith("pos_embedding.embedding.weight"):
            value = 0.5 * value
        elif key != "token_embedding.weight":
            value = value / math.sqrt(shape[1])  # [out, in] linears
        state[key] = value.to(device=device, dtype=dtype)
    return state


def build_umt5(
    cfg: TextEncoderConfig,
    *,
    seed: int = RANDOM_WEIGHTS_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UMT5EncoderModel:
    """The encoder with seeded random weights (the same numbers on every machine for small configs)."""
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(cfg))
    state = random_wan_state_dict(cfg, seed=seed, device=device, dtype=dtype)
    load_wan_weights(model, state, source=f"random text encoder (seed {seed})")
    return model.eval()


# ---- tokenizers ---------------------------------------------------------------------------------------------

_TOY_TEXT = (
    "a an the and or of in on at to with from by for over under into through near behind above below "
    "is are was be being while as it its his her their this that these those "
    "man woman child girl boy person people dog cat bird horse fish car boat train plane city street road "
    "house room window door tree forest flower grass field mountain river lake sea ocean beach sky cloud "
    "sun moon star rain snow wind fire water light shadow night day morning evening "
    "red orange yellow green blue purple pink white black gray brown golden silver "
    "big small tall short old young new bright dark soft slow fast gentle calm "
    "walks runs jumps flies swims dances smiles looks turns moves falls rises sits stands holds "
    "camera shot close up wide view slowly moving pan zoom tilt tracking scene background foreground "
    "cinematic realistic detailed high quality style video image photo film motion "
    "hair face eyes hand hands head body dress shirt hat"
)
_TOY_WORDS = tuple(_TOY_TEXT.split())
_TOY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()[]/&%$#@*+=<>_~"


@functools.lru_cache(maxsize=4)
def toy_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A deterministic Unigram tokenizer for the toy model: fixed vocabulary, no training, no files.

    Layout follows T5: <pad>=0, </s>=1, <unk>=2, every sequence ends with </s>; lower-cased.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    # Whole words score above their spelling so the segmentation prefers them; characters cover the rest.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -6.0)]
    pieces += [(c, -8.0) for c in _TOY_CHARS]
    words = [(f"\u2581{w}", -4.0) for w in dict.fromkeys(_TOY_WORDS)]
    if vocab_size < len(pieces):
        raise ValueError(f"the toy tokenizer needs a vocabulary of at least {len(pieces)}, the model has {vocab_size}")
    pieces += words[: vocab_size - len(pieces)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def load_tokenizer(config: ModelConfig, weights_dir: Path | None) -> PreTrainedTokenizerBase:
    """`<weights_dir>/<tokenizer_dir>` when it exists (local files only); the toy tokenizer for random-weight models."""
    if weights_dir is not None:
        folder = Path(weights_dir) / config.tokenizer_dir
        if folder.is_dir():
            return _tokenizer_from_folder(folder)
        if not config.random_weights:
            raise WeightsError(
                f"tokenizer folder {folder} is missing (expected the {config.tokenizer_dir} tokenizer files)"
            )
    return toy_tokenizer(config.text.vocab_size)


def _tokenizer_from_folder(folder: Path) -> PreTrainedTokenizerBase:
    if not any((folder / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        raise WeightsError(f"tokenizer folder {folder} has neither tokenizer.json nor spiece.model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder; the path is what matters
        raise WeightsError(f"cannot load the tokenizer from {folder}: {exc}") from exc
    return tokenizer


# ---- the encoder ----------------------------------------------------------------------------------------------


@dataclass
class TextEncoder:
    """Prompts -> [B, text_len, dim] context for the DiT: the first `len` outputs of each prompt, zeros after."""

    model: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    config: TextEncoderConfig

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    def to(self, device: torch.device | str) -> TextEncoder:
        """Move the weights (e.g. to "cpu" to free the GPU after encoding); returns self."""
        self.model.to(device)
        return self

    def token_ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [B, L], L = the longest prompt (at most text_len), with </s> at the end."""
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="longest",
            truncation=True,
            max_length=self.config.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        if isinstance(prompts, str) or not prompts:
            raise ValueError("encode takes a non-empty list of prompts")
        ids, mask = self.token_ids(prompts)
        # A tokenizer may list more names than the embedding has rows (unused extra ids); only used ids matter.
        if int(ids.max()) >= self.config.vocab_size:
            raise WeightsError(
                f"the tokenizer produced id {int(ids.max())}, beyond the text encoder's {self.config.vocab_size} "
                "embeddings: tokenizer and encoder weights do not belong together"
            )
        ids, mask = ids.to(self.device), mask.to(self.device)
        # Padding keys are masked out, so running only up to the longest prompt gives the same outputs as
        # running all text_len positions (relative positions of real tokens do not change); it is much cheaper.
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        out = hidden.new_zeros(len(prompts), self.config.text_len, self.config.dim)
        out[:, : hidden.shape[1]] = hidden
        return out


def load_text_encoder(
    config: ModelConfig,
    weights_dir: Path | None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TextEncoder:
    """The umT5 encoder from `<weights_dir>/<text_encoder_file>` (Wan keys), or seeded random weights for None."""
    tokenizer = load_tokenizer(config, weights_dir)
    if weights_dir is None:
        model = build_umt5(config.text, device=device, dtype=dtype)
    else:
        path = Path(weights_dir) / config.text_encoder_file
        from inference.checkpoint import load_state_dict_file

        sd = load_state_dict_file(path)
        # Built on meta (umT5-XXL is 5.7B parameters): load_into assigns the checkpoint's tensors as they are.
        with torch.device("meta"):
            model = UMT5EncoderModel(umt5_config(config.text))
        load_wan_weights(model, sd, source=f"text encoder {path}")
        model = model.to(device=device, dtype=dtype)
        model.encoder.set_input_embeddings(model.shared)
    return TextEncoder(model=model.eval().requires_grad_(False), tokenizer=tokenizer, config=config.text)
