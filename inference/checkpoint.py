"""Loading weight files into modules built on the meta device: strict, by official key names, one copy in memory.

Used by the DiT experts, the VAE and the text encoder. Every failure is a WeightsError that names the file,
the keys or the shapes at fault.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from inference.configs import ModelConfig
from inference.dit import WanDiT
from inference.quant import block_linear_names, quantize_model_linears
from inference.types import WeightsError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
# A fixup sees the checkpoint's tensors and the module's expected shapes, and returns the tensors to load.
KeyFixup = Callable[[StateDict, Mapping[str, torch.Size]], StateDict]

_WRAPPER_PREFIX = "_checkpoint_wrapped_module."
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_LIST_LIMIT = 12


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def _read_safetensors(path: Path, device: str) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as exc:
        raise WeightsError(f"cannot read safetensors file {path}: {exc}") from exc


def _read_sharded_folder(folder: Path, device: str) -> StateDict:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        index_path = indexes[0]
        try:
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsError(f"cannot read shard index {index_path}: {exc}") from exc
        shards = sorted(set(weight_map.values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise WeightsError(f"shard index {index_path} names missing files: {_names(missing)}")
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
        if not shards:
            raise WeightsError(f"weights folder {folder} holds no *.safetensors files and no shard index")
        weight_map = {}
    state: StateDict = {}
    for shard in shards:
        for key, tensor in _read_safetensors(folder / shard, device).items():
            if key in state:
                raise WeightsError(f"key {key} appears in more than one shard of {folder}")
            if weight_map and weight_map.get(key) != shard:
                raise WeightsError(f"key {key} is in shard {shard} but the index of {folder} puts it elsewhere")
            state[key] = tensor
    if weight_map:
        absent = sorted(set(weight_map).difference(state))
        if absent:
            raise WeightsError(f"keys listed in the index of {folder} are in no shard: {_names(absent)}")
    return state


def _read_torch_file(path: Path) -> StateDict:
    try:
        # mmap: tensors stay in the page cache until assigned, so a 14B expert is not copied into RAM twice.
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc
    # Training checkpoints nest the weights under one of these keys.
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict) and len(loaded) <= 4:
            log.info("checkpoint %s: using the weights nested under %r", path, wrapper)
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict):
        raise WeightsError(f"checkpoint {path} holds a {type(loaded).__name__}, not a dict of tensors")
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"checkpoint {path} has entries that are not tensors: {_names(not_tensors)}")
    return dict(loaded)


def load_state_dict_file(path: str | Path, *, device: str = "cpu") -> StateDict:
    """Tensors of a .pth/.pt (torch.load, weights only, mmap), a single .safetensors file, or a folder of
    (sharded) safetensors with a `*.safetensors.index.json`."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weight file {path} does not exist")
    if path.is_dir():
        return _read_sharded_folder(path, device)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, device)
    if path.suffix in _TORCH_SUFFIXES:
        state = _read_torch_file(path)
        return state if device == "cpu" else {key: value.to(device) for key, value in state.items()}
    raise WeightsError(f"weight file {path} has an unknown format (expected .pth, .safetensors or a folder)")


# ---------------------------------------------------------------------------------------------------------------
# Assigning into a module
# ---------------------------------------------------------------------------------------------------------------


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module without allocating its weights; load_into then assigns the checkpoint's tensors."""
    with torch.device("meta"):
        return factory()


def strip_checkpoint_wrapper(state: StateDict, expected: Mapping[str, torch.Size]) -> StateDict:
    """Drop the `_checkpoint_wrapped_module.` that activation-checkpointed training leaves in key names."""
    wrapped = [key for key in state if _WRAPPER_PREFIX in key]
    if not wrapped:
        return state
    log.info("stripping %r from %d checkpoint keys", _WRAPPER_PREFIX, len(wrapped))
    return {key.replace(_WRAPPER_PREFIX, ""): value for key, value in state.items()}


def strip_training_prefix(state: StateDict, expected: Mapping[str, torch.Size]) -> StateDict:
    """TurboDiffusion training checkpoints prefix every key with `net.`; drop it when all keys carry it and the
    module's own keys do not."""
    prefix = "net."
    if not state or not all(key.startswith(prefix) for key in state):
        return state
    if expected and any(key.startswith(prefix) for key in expected):
        return state
    log.info("stripping the training prefix %r from all %d checkpoint keys", prefix, len(state))
    return {key[len(prefix) :]: value for key, value in state.items()}


def unflatten_conv_weights(state: StateDict, expected: Mapping[str, torch.Size]) -> StateDict:
    """Reshape convolution weights stored flattened as [out, in * kernel...] (TurboDiffusion's patch embedding is
    [5120, 144] for [5120, 36, 1, 2, 2], in (c, kt, kh, kw) order, which is exactly the Conv3d memory order)."""
    out = state
    for key, tensor in state.items():
        shape = expected.get(key)
        if (
            shape is not None
            and len(shape) > 2
            and tensor.dim() == 2
            and tensor.shape[0] == shape[0]
            and tensor.numel() == math.prod(shape)
        ):
            if out is state:
                out = dict(state)
            log.info("reshaping flattened %s %s -> %s", key, list(tensor.shape), list(shape))
            out[key] = tensor.reshape(shape)
    return out


DEFAULT_KEY_FIXUPS: tuple[KeyFixup, ...] = (strip_training_prefix, strip_checkpoint_wrapper, unflatten_conv_weights)


def _names(items: Sequence[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def check_state_dict(module: nn.Module, state: StateDict, *, what: str, strict: bool = True) -> None:
    """Raise WeightsError naming missing keys, unexpected keys and shape mismatches (strict), or shapes only."""
    expected = module.state_dict()
    missing = sorted(set(expected).difference(state))
    unexpected = sorted(set(state).difference(expected))
    mismatched = sorted(
        f"{key} (checkpoint {list(state[key].shape)}, model {list(expected[key].shape)})"
        for key in set(expected).intersection(state)
        if state[key].shape != expected[key].shape
    )
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: {_names(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_names(mismatched)}")
    if problems:
        raise WeightsError(f"{what} does not match the model: " + "; ".join(problems))


def load_into(
    module: nn.Module,
    state_dict: StateDict,
    *,
    what: str,
    strict: bool = True,
    key_fixups: Sequence[KeyFixup] = DEFAULT_KEY_FIXUPS,
) -> None:
    """Assign the checkpoint's tensors to `module`'s parameters and buffers (no copy: a meta-built module takes the
    tensors as they are, so their device and dtype are the caller's choice). `what` names the weights in errors."""
    expected_shapes = {key: value.shape for key, value in module.state_dict().items()}
    for fixup in key_fixups:
        state_dict = fixup(state_dict, expected_shapes)
    check_state_dict(module, state_dict, what=what, strict=strict)
    module.load_state_dict(state_dict, strict=strict, assign=True)
    still_meta = [name for name, tensor in module.state_dict().items() if tensor.is_meta]
    if still_meta:
        log.warning("%s left %d tensors unloaded: %s", what, len(still_meta), _names(still_meta))


# ---------------------------------------------------------------------------------------------------------------
# The DiT
# ---------------------------------------------------------------------------------------------------------------

_INT8_SUFFIX = ".int8_weight"
_PROJ_L_MARKER = ".attn_op.local_attn.proj_l."
# Kept in fp32 whatever the compute dtype: added or multiplied in fp32 upstream (bf16 -> fp32 is exact; the
# "-quant" checkpoints store the norm weights in fp32, so casting them down would lose bits).
_FP32_SUFFIXES = ("modulation", ".scale", "norm_q.weight", "norm_k.weight", "norm3.weight", "norm3.bias")


def _target_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    if not tensor.is_floating_point():
        return tensor.dtype
    if _PROJ_L_MARKER in key or key.endswith(_FP32_SUFFIXES):
        return torch.float32
    return dtype


def _expert_seed(config: ModelConfig, expert: str) -> int:
    return zlib.crc32(f"{config.name}/dit/{expert}".encode())


def random_dit_state_dict(
    model: nn.Module, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> StateDict:
    """Seeded random weights for a (meta-built) float DiT, scaled so activations stay O(1) through the layers.

    Small models draw on the CPU so every device sees the same numbers; large ones draw on `device` to save time.
    Each tensor is cast to its load dtype as soon as it is drawn, so a full-size expert never exists in fp32.
    """
    shapes = {key: tensor.shape for key, tensor in model.state_dict().items()}
    total = sum(math.prod(shape) for shape in shapes.values())
    draw_device = torch.device("cpu") if total < 200_000_000 else torch.device(device)
    generator = torch.Generator(device=draw_device)

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=draw_device)

    state: StateDict = {}
    for key, shape in shapes.items():
        # One stream per key: a tensor's values do not depend on which other layers (e.g. SLA's proj_l) exist.
        generator.manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        if key.endswith("modulation"):
            value = randn(shape) / math.sqrt(shape[-1])
        elif key.endswith(".bias"):
            value = 0.02 * randn(shape)
        elif len(shape) == 1:  # norm weights
            value = 1.0 + 0.1 * randn(shape)
        else:
            fan_in = math.prod(shape[1:])
            value = randn(shape) / math.sqrt(fan_in)
        state[key] = value.to(device=device, dtype=_target_dtype(key, value, dtype))
    return state


def _select_attention(attention: str | Sequence[str], state: StateDict, num_layers: int) -> str | Sequence[str]:
    has_sla = any(_PROJ_L_MARKER in key for key in state)
    if attention == "auto":
        return "sla" if has_sla else "dense"
    kinds = [attention] * num_layers if isinstance(attention, str) else list(attention)
    if "sla" in kinds and not has_sla:
        raise WeightsError(
            "the checkpoint has no SLA weights (blocks.N.self_attn.attn_op.local_attn.proj_l); "
            "it is not a TurboDiffusion SLA checkpoint: load it with attention='dense'"
        )
    return attention


def _drop_unused_proj_l(state: StateDict, model: nn.Module) -> StateDict:
    """Layers run with dense attention do not use SLA's proj_l: drop those keys instead of failing strict load."""
    expected = set(model.state_dict())
    unused = [key for key in state if _PROJ_L_MARKER in key and key not in expected]
    if not unused:
        return state
    log.info("dense attention: ignoring %d SLA proj_l tensors of the checkpoint", len(unused))
    return {key: value for key, value in state.items() if key not in unused}


def load_dit(
    config: ModelConfig,
    path_or_none: str | Path | None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    attention: str | Sequence[str] = "sla",
    expert: str = "high",
    quantize: bool = False,
) -> WanDiT:
    """One DiT expert ready for inference.

    path_or_none: a checkpoint in any official layout (.pth / .safetensors / sharded folder; float or int8
    "-quant"; flattened or Conv3d patch embedding), or None for seeded random weights (one seed per `expert`).
    attention: "sla", "dense", "auto" (SLA when the checkpoint has its weights) or one kind per layer.
    quantize: also turn the remaining float block linears into int8 (the "-quant" layout) after loading.
    Float tensors are cast to `dtype` except those upstream keeps in fp32 (modulations, norm weights, SLA's proj_l,
    int8 scales).
    """
    dit_cfg = config.dit
    device = torch.device(device)
    if path_or_none is None:
        attention = "sla" if attention == "auto" else attention
        model = build_on_meta(lambda: WanDiT(dit_cfg, attention))
        state = random_dit_state_dict(model, _expert_seed(config, expert), device, dtype)
        what = f"random {expert}-noise DiT ({config.name})"
    else:
        path = Path(path_or_none)
        what = f"DiT {expert}-noise expert {path}"
        state = strip_checkpoint_wrapper(strip_training_prefix(load_state_dict_file(path), {}), {})
        attention = _select_attention(attention, state, dit_cfg.num_layers)
        model = build_on_meta(lambda: WanDiT(dit_cfg, attention))
        int8_layers = sorted(key[: -len(_INT8_SUFFIX)] for key in state if key.endswith(_INT8_SUFFIX))
        if int8_layers:
            not_linears = sorted(set(int8_layers).difference(block_linear_names(model)))
            if not_linears:
                raise WeightsError(f"{what}: int8 weights for layers the model keeps float: {_names(not_linears)}")
            quantize_model_linears(model, only=int8_layers)
            log.info("%s: %d int8 block linears", what, len(int8_layers))
        state = _drop_unused_proj_l(state, model)

    state = {key: value.to(device=device, dtype=_target_dtype(key, value, dtype)) for key, value in state.items()}
    load_into(model, state, what=what)
    del state
    if quantize:
        quantize_model_linears(model)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------
# What is installed
# ---------------------------------------------------------------------------------------------------------------

_OFFICIAL_EXPERT_FOLDERS = {"high": "high_noise_model", "low": "low_noise_model"}


def _quant_variants(name: str) -> list[str]:
    """The file name and its other-precision twin (TurboWan...-720P-quant.pth <-> TurboWan...-720P.pth)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        return [name]
    twin = f"{stem[: -len('-quant')]}.{suffix}" if stem.endswith("-quant") else f"{stem}-quant.{suffix}"
    return [name, twin]


def _expert_present(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def resolve_weight_files(config: ModelConfig, weights_dir: Path | None) -> dict[str, Path | None]:
    """The path to load for each component ("high", "low", "vae", "text", "tokenizer"), None where absent.

    Experts: the configured file, else its quant/non-quant twin, else the official sharded folder.
    """
    found: dict[str, Path | None] = dict.fromkeys(("high", "low", "vae", "text", "tokenizer"))
    if weights_dir is None or not Path(weights_dir).is_dir():
        return found
    root = Path(weights_dir)
    for expert, file_name in (("high", config.high_noise_file), ("low", config.low_noise_file)):
        candidates = [root / name for name in _quant_variants(file_name)]
        hit = next((p for p in candidates if p.is_file()), None)
        folder = root / _OFFICIAL_EXPERT_FOLDERS[expert]
        found[expert] = hit if hit is not None else (folder if _expert_present(folder) else None)
    for key, name in (("vae", config.vae_file), ("text", config.text_encoder_file)):
        found[key] = root / name if (root / name).is_file() else None
    tokenizer = root / config.tokenizer_dir
    found["tokenizer"] = tokenizer if tokenizer.is_dir() and any(tokenizer.iterdir()) else None
    return found


def weights_status(config: ModelConfig, weights_dir: Path | None) -> dict[str, object]:
    """installed: every file the model needs is present; missing: the configured names of those absent;
    paths: what resolve_weight_files found. Models with random weights need nothing."""
    if config.random_weights:
        return {"installed": True, "missing": [], "paths": {}}
    expected = {
        "high": config.high_noise_file,
        "low": config.low_noise_file,
        "vae": config.vae_file,
        "text": config.text_encoder_file,
        "tokenizer": config.tokenizer_dir,
    }
    paths = resolve_weight_files(config, weights_dir)
    missing = [name for key, name in expected.items() if paths[key] is None]
    return {"installed": not missing, "missing": missing, "paths": paths}
