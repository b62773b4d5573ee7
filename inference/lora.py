"""LoRA adapters for the two DiT experts, chosen per request and applied unmerged.

A LoRA adds strength * scale * B (A x) to a linear's output (A: [rank, in], B: [out, rank], scale = alpha / rank
when the file gives alpha, else 1). It runs as a low-rank path beside each block linear (a forward hook: two thin
GEMMs, whatever the linear's own precision), so the experts' weights (fp8, int8 or bf16) are never touched:
nothing is re-quantized per job, and removing the hooks leaves the model exactly as it was. Several LoRAs on one
linear are concatenated along the rank: still two GEMMs. When the fp8 linears receive an activation already
quantized (Fp8Rows: the fused norms and GELU write those), the A GEMM runs in fp8 too on those same rows.

Files (inference/weights.md, "LoRA"): `$TURBO_MODEL_DIR/loras/<name>/manifest.json` naming one safetensors file
per expert, keys in the common layouts: `<target>.lora_A.weight` / `.lora_B.weight`, or `.lora_down.weight` /
`.lora_up.weight` with an optional `.alpha`, with or without a `diffusion_model.` prefix, where <target> is a block
linear such as `blocks.0.self_attn.q` or `blocks.7.ffn.2`. Any other key is an error that names it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference.types import InferenceInputError, WeightsError

MAX_LORAS = 3
STRENGTH_LIMIT = 4.0
MANIFEST = "manifest.json"
EXPERT_KEYS = {"high": "high_noise", "low": "low_noise"}
# Lower-case letters, digits, '.', '_' and '-', starting with a letter or digit: a folder name and a URL-safe id.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PREFIXES = ("diffusion_model.", "model.diffusion_model.")
_TARGET = re.compile(r"^blocks\.(\d+)\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.0|ffn\.2)$")
_SUFFIXES = {
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora_down.weight": "down", ".lora_up.weight": "up",
    ".alpha": "alpha",
}
# Rank padded to this on CUDA: the fp8 GEMM (torch._scaled_mm) wants every dimension a multiple of 16.
_RANK_MULTIPLE = 16


@dataclass(frozen=True)
class LoraPair:
    down: torch.Tensor  # A [rank, in]
    up: torch.Tensor  # B [out, rank]
    scale: float  # alpha / rank, or 1 without alpha


def parse_lora_state(state: dict[str, torch.Tensor], source: str) -> dict[str, LoraPair]:
    """{block linear name: LoraPair} from a LoRA state dict; WeightsError naming unknown keys or bad shapes."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        name = key
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
        target = name[: -len(suffix)] if suffix else ""
        if suffix is None or not _TARGET.match(target):
            unknown.append(key)
            continue
        slot = _SUFFIXES[suffix]
        if slot in parts.setdefault(target, {}):
            raise WeightsError(f"LoRA file {source}: two keys give {slot} of {target} (e.g. {key})")
        parts[target][slot] = tensor
    if unknown:
        shown = ", ".join(sorted(unknown)[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise WeightsError(
            f"LoRA file {source}: keys not understood: {shown}. Accepted: blocks.N.(self_attn|cross_attn).(q|k|v|o) "
            "and blocks.N.ffn.(0|2) with .lora_A/.lora_B.weight or .lora_down/.lora_up.weight (+ .alpha), "
            "optionally prefixed by diffusion_model."
        )
    if not parts:
        raise WeightsError(f"LoRA file {source} holds no LoRA weights")
    pairs: dict[str, LoraPair] = {}
    for target, found in sorted(parts.items()):
        if "down" not in found or "up" not in found:
            missing = "down (lora_A / lora_down)" if "down" not in found else "up (lora_B / lora_up)"
            raise WeightsError(f"LoRA file {source}: {target} has no {missing} weight")
        down, up = found["down"], found["up"]
        if down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
            raise WeightsError(f"LoRA file {source}: {target} has A {tuple(down.shape)} and B {tuple(up.shape)}, "
                               "expected A [rank, in] and B [out, rank]")
        rank = down.shape[0]
        scale = 1.0
        if "alpha" in found:
            alpha = float(found["alpha"].float().reshape(-1)[0])
            scale = alpha / rank
        pairs[target] = LoraPair(down=down, up=up, scale=scale)
    return pairs


def load_lora_file(path: Path) -> dict[str, LoraPair]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise WeightsError(f"LoRA file {path} cannot be read: {exc}") from exc
    return parse_lora_state(state, str(path))


def read_manifest(folder: Path) -> dict[str, object]:
    """The manifest of one installed LoRA: title, description, high_noise / low_noise file names (one may be
    null: that expert is left alone), default_strength."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"LoRA manifest {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or not any(data.get(key) for key in EXPERT_KEYS.values()):
        raise WeightsError(f"LoRA manifest {path} names no file: give high_noise and/or low_noise")
    return data


@dataclass(frozen=True)
class LoraChoice:
    name: str
    strength: float


def check_choices(loras: Sequence[tuple[str, float]] | Sequence[LoraChoice]) -> list[LoraChoice]:
    """Names and strengths a request may ask for: at most MAX_LORAS, each name once, finite strengths."""
    choices = [c if isinstance(c, LoraChoice) else LoraChoice(str(c[0]), float(c[1])) for c in loras]
    if len(choices) > MAX_LORAS:
        raise InferenceInputError(f"at most {MAX_LORAS} LoRAs per request, got {len(choices)}")
    seen: set[str] = set()
    for choice in choices:
        if not NAME_PATTERN.match(choice.name):
            raise InferenceInputError(f"LoRA name {choice.name[:70]!r} is not a valid name")
        if choice.name in seen:
            raise InferenceInputError(f"LoRA {choice.name!r} is named twice")
        seen.add(choice.name)
        if not math.isfinite(choice.strength) or abs(choice.strength) > STRENGTH_LIMIT:
            raise InferenceInputError(f"LoRA strength must be between -{STRENGTH_LIMIT:g} and {STRENGTH_LIMIT:g}, "
                                      f"got {choice.strength} for {choice.name!r}")
    return choices


class LoraLibrary:
    """The LoRAs installed under one folder, loaded from disk on first use and kept (on the host) for later jobs."""

    def __init__(self, folder: Path | None, keep: int = 4) -> None:
        self.folder = folder
        self.keep = keep
        self._loaded: dict[tuple[str, float], dict[str, dict[str, LoraPair]]] = {}

    def expert_pairs(self, name: str) -> dict[str, dict[str, LoraPair]]:
        """{"high": pairs, "low": pairs} of an installed LoRA (an expert without a file gets {})."""
        if self.folder is None or not (self.folder / name / MANIFEST).is_file():
            raise InferenceInputError(f"LoRA {name!r} is not installed")
        folder = self.folder / name
        stamp = (folder / MANIFEST).stat().st_mtime
        cached = self._loaded.get((name, stamp))
        if cached is not None:
            return cached
        manifest = read_manifest(folder)
        loaded: dict[str, dict[str, LoraPair]] = {}
        for expert, key in EXPERT_KEYS.items():
            file_name = manifest.get(key)
            if not file_name:
                loaded[expert] = {}
                continue
            path = (folder / str(file_name)).resolve()
            if folder.resolve() not in path.parents:
                raise WeightsError(f"LoRA manifest {folder / MANIFEST}: {key} must name a file inside its folder")
            loaded[expert] = load_lora_file(path)
        self._loaded = {k: v for k, v in self._loaded.items() if k[0] != name}
        while len(self._loaded) >= self.keep:
            self._loaded.pop(next(iter(self._loaded)))
        self._loaded[(name, stamp)] = loaded
        return loaded


def _lora_targets(dit: nn.Module) -> dict[str, tuple[nn.Module, int, int]]:
    """{block linear name: (module that computes it, first output column, out features)}: with fused q/k/v each of
    the three names points into the fused layer's output."""
    targets: dict[str, tuple[nn.Module, int, int]] = {}
    for i, block in enumerate(dit.blocks):
        qkv = getattr(block.self_attn, "qkv", None)
        for branch in ("self_attn", "cross_attn"):
            attn = getattr(block, branch)
            for proj in "qkvo":
                module = getattr(attn, proj, None)
                if module is not None:
                    targets[f"blocks.{i}.{branch}.{proj}"] = (module, 0, module.out_features)
        if qkv is not None:
            dim = qkv.out_features // 3
            for j, proj in enumerate("qkv"):
                targets[f"blocks.{i}.self_attn.{proj}"] = (qkv, j * dim, dim)
        for index in (0, 2):
            module = block.ffn[index]
            targets[f"blocks.{i}.ffn.{index}"] = (module, 0, module.out_features)
    return targets


class _LowRankPath:
    """The summed LoRA update of one module's output: out[:, cols] += (x A^T) B^T for each column range."""

    def __init__(self, down: torch.Tensor, ups: list[tuple[int, int, int, int, torch.Tensor]]) -> None:
        self.down = down  # [R, in] in the compute dtype
        self.ups = ups  # (out start, out size, rank start, rank size, B [size, rank] with scale and strength)
        self.down_fp8: torch.Tensor | None = None
        self.down_scale: torch.Tensor | None = None
        if down.is_cuda:
            from turbokernels.fp8_linear import quantize_rows_fp8_reference

            q, s = quantize_rows_fp8_reference(down)
            self.down_fp8, self.down_scale = q, s.view(1, -1)

    def hidden(self, x: object) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.reshape(-1, x.shape[-1]).to(self.down.dtype) @ self.down.t()
        data, scale = x.data, x.scale  # Fp8Rows, quantized once for the linear and reused here
        if data.is_cuda and self.down_fp8 is not None:
            return torch._scaled_mm(data, self.down_fp8.t(), scale_a=scale, scale_b=self.down_scale,
                                    out_dtype=self.down.dtype, use_fast_accum=True)
        return (data.float() * scale).to(self.down.dtype) @ self.down.t()

    def __call__(self, module: nn.Module, args: tuple[object, ...], out: torch.Tensor) -> torch.Tensor:
        h = self.hidden(args[0])
        flat = out.view(-1, out.shape[-1])
        for start, size, r0, r, up in self.ups:
            target = flat[:, start:start + size]
            if target.dtype == up.dtype:
                target.addmm_(h[:, r0:r0 + r], up.t())  # in place: one pass over the output
            else:
                target += (h[:, r0:r0 + r] @ up.t()).to(target.dtype)
        return out


def build_paths(
    dit: nn.Module, adapters: Sequence[tuple[dict[str, LoraPair], float]], device: torch.device, dtype: torch.dtype
) -> dict[nn.Module, _LowRankPath]:
    """One _LowRankPath per module that any adapter touches; WeightsError when a target does not fit the model."""
    targets = _lora_targets(dit)
    adapters = [(pairs, strength) for pairs, strength in adapters if pairs and strength != 0.0]
    per_module: dict[nn.Module, list[tuple[str, int, int, LoraPair, float]]] = {}
    for pairs, strength in adapters:
        for name, pair in pairs.items():
            if name not in targets:
                raise WeightsError(f"LoRA targets {name}, which this model does not have "
                                   f"({len(dit.blocks)} blocks)")
            module, start, size = targets[name]
            in_features = module.in_features
            if pair.down.shape[1] != in_features or pair.up.shape[0] != size:
                raise WeightsError(f"LoRA for {name} is {pair.up.shape[0]}x{pair.down.shape[1]} (out x in); the "
                                   f"model's layer is {size}x{in_features}")
            per_module.setdefault(module, []).append((name, start, size, pair, strength))
    paths: dict[nn.Module, _LowRankPath] = {}
    for module, entries in per_module.items():
        downs, ups, rank = [], [], 0
        for _name, start, size, pair, strength in entries:
            r = pair.down.shape[0]
            downs.append(pair.down.to(device=device, dtype=torch.float32))
            up = pair.up.to(device=device, dtype=torch.float32) * (pair.scale * strength)
            ups.append((start, size, rank, r, up.to(dtype)))
            rank += r
        down = torch.cat(downs)
        if device.type == "cuda" and rank % _RANK_MULTIPLE:
            down = torch.cat([down, down.new_zeros(_RANK_MULTIPLE - rank % _RANK_MULTIPLE, down.shape[1])])
        paths[module] = _LowRankPath(down.to(dtype), ups)
    return paths


@contextmanager
def applied(paths: dict[nn.Module, _LowRankPath]) -> Iterator[int]:
    """Within the block the modules compute with their low-rank paths (yields how many carry one); leaving it,
    by return or exception, removes every hook, so the next job sees the bare model."""
    handles = [module.register_forward_hook(path) for module, path in paths.items()]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def merge_into(dit: nn.Module, pairs: dict[str, LoraPair], strength: float) -> None:
    """Add strength * scale * B A to the float weights of `dit` (plain nn.Linear layers): the merged form that
    tests compare the unmerged path with. Not used at run time."""
    for name, pair in pairs.items():
        linear = dit.get_submodule(name)
        delta = (pair.up.float() @ pair.down.float()) * (pair.scale * strength)
        linear.weight.data += delta.to(linear.weight.dtype)
