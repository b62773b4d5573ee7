"""W8A8 int8 linears in the layout of the TurboDiffusion "-quant" checkpoints.

Every Linear inside `blocks` except SLA's `proj_l` is stored as `int8_weight` (int8 [out, in]), `scale`
(fp32 [ceil(out/128), ceil(in/128)], absmax/128 per 128x128 tile) and `bias`. Layers outside `blocks` stay float.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import nn

from turbokernels import dispatch

QUANT_TILE = 128
# Linears that stay float inside blocks: SLA's small fp32 projection.
_FLOAT_LINEAR_SUFFIXES = ("proj_l",)


class Int8Linear(nn.Module):
    """Linear with a tile-quantized int8 weight; activations are quantized per tile at run time."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        scale_shape = (math.ceil(out_features / QUANT_TILE), math.ceil(in_features / QUANT_TILE))
        self.register_buffer("int8_weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(scale_shape, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize a float Linear (its bias keeps its dtype)."""
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, bias_dtype=weight.dtype, device=weight.device)
        if weight.is_meta:
            return layer
        int8_weight, scale = dispatch.quantize_int8_blockwise(weight, QUANT_TILE)
        layer.int8_weight.copy_(int8_weight)
        layer.scale.copy_(scale)
        if linear.bias is None:
            layer.bias = None
        else:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.int8_linear(x, self.int8_weight, self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tile={QUANT_TILE}"


def block_linear_names(dit: nn.Module) -> list[str]:
    """Qualified names of the Linears the quantized layout stores as int8: inside `blocks`, not proj_l."""
    return [
        name
        for name, module in dit.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("blocks.") and not name.endswith(_FLOAT_LINEAR_SUFFIXES)
    ]


def quantize_model_linears(dit: nn.Module, only: Collection[str] | None = None) -> list[str]:
    """Replace the block Linears of `dit` (or just those named in `only`) by Int8Linear, quantizing their weights.

    On a meta-device model this only changes the structure (to receive a quantized state dict). Returns the
    names replaced.
    """
    names = block_linear_names(dit)
    if only is not None:
        wanted = set(only)
        unknown = wanted.difference(names)
        if unknown:
            raise ValueError(f"not quantizable block linears: {', '.join(sorted(unknown)[:10])}")
        names = [name for name in names if name in wanted]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = dit.get_submodule(parent_name)
        setattr(parent, child, Int8Linear.from_linear(getattr(parent, child)))
    return names


def quantize_state_dict(state_dict: dict[str, torch.Tensor], linear_names: Collection[str]) -> dict[str, torch.Tensor]:
    """A float state dict rewritten in the quantized layout for the Linears named (prefix `name.`)."""
    out = dict(state_dict)
    for name in linear_names:
        weight = out.pop(f"{name}.weight")
        int8_weight, scale = dispatch.quantize_int8_blockwise(weight, QUANT_TILE)
        out[f"{name}.int8_weight"] = int8_weight
        out[f"{name}.scale"] = scale
    return out
