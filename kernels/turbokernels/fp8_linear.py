"""fp8 (e4m3) linears for bf16 checkpoints on Hopper: weights quantized once at load time, per output row;
activations per token at run time by a Triton kernel; the GEMM is cuBLASLt's row-wise scaled fp8 product
(torch._scaled_mm), bf16 out with the bias fused.

Error: e4m3 keeps 3 mantissa bits, so each operand carries ~2% relative rounding noise; a block linear's output
lands near 3% relative (Frobenius) error against bf16 (measured numbers in bench/README.md). The int8 path with
128x128 tiles (kernels/turbokernels/int8_linear.py) is more accurate; fp8 is the fast path for bf16 checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from turbokernels.norms_triton import row_warps
from turbokernels.torch_compile import opaque_to_compile

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
_MIN_AMAX = 1e-12
# Hopper's fp8 tensor-core accumulation without periodic promotion to fp32: 14-25% faster GEMMs at the block's
# shapes on an H100 with the same error against fp32 (3.75e-2 either way, K = 5120 and 13824; bench/README.md).
FAST_ACCUM = True
# Linears inside the blocks that stay in their own precision (SLA's tiny fp32 head-dim projection).
DEFAULT_SKIP = ("proj_l",)



if HAVE_TRITON:

    @triton.jit
    def _quantize_rows_fp8_kernel(X, QX, SCALE, cols, sxr, sxc, BLOCK: tl.constexpr):
        # Rows wider than one block: an amax pass, then a scaling pass (the second read mostly hits L2).
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        amax = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, cols, BLOCK):
            x = tl.load(X + row * sxr + (c0 + offs) * sxc, mask=(c0 + offs) < cols, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.max(amax, axis=0), 1e-12) / 448.0
        for c0 in range(0, cols, BLOCK):
            mask = (c0 + offs) < cols
            x = tl.load(X + row * sxr + (c0 + offs) * sxc, mask=mask, other=0.0).to(tl.float32)
            tl.store(QX + row * cols + c0 + offs, (x / scale).to(QX.dtype.element_ty), mask=mask)
        tl.store(SCALE + row, scale)

    @triton.jit
    def _quantize_row_once_kernel(X, QX, SCALE, cols, sxr, BLOCK: tl.constexpr, GELU: tl.constexpr):
        # The whole row stays in registers: one read, one fp8 write (the common case, rows <= 16384 wide).
        # With GELU, the tanh-approximated GELU is applied first, so an FFN's hidden activation is read once
        # instead of three times (GELU, amax, scale).
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < cols
        x = tl.load(X + row * sxr + offs, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            # tanh from exp(-2|u|) <= 1: no overflow at either tail.
            e = tl.exp(-2.0 * tl.abs(u))
            t = (1.0 - e) / (1.0 + e)
            x = 0.5 * x * (1.0 + tl.where(u < 0, -t, t))
        scale = tl.maximum(tl.max(tl.where(mask, tl.abs(x), 0.0), axis=0), 1e-12) / 448.0
        tl.store(QX + row * cols + offs, (x / scale).to(QX.dtype.element_ty), mask=mask)
        tl.store(SCALE + row, scale)


def quantize_rows_fp8_reference(x: torch.Tensor, *, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 e4m3 [rows, cols], fp32 scale [rows, 1]) with scale = absmax / 448 per row, of x or (gelu) of
    GELU(tanh)(x) computed in fp32; pure PyTorch."""
    xf = F.gelu(x.float(), approximate="tanh") if gelu else x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_MIN_AMAX) / FP8_MAX
    return (xf / scale).to(FP8_DTYPE), scale


# Rows up to this width are quantized in one pass with the row held in registers.
_ONE_PASS_COLS = 16384


@dataclass(frozen=True)
class Fp8Rows:
    """An activation already quantized for an Fp8Linear: fp8 `data` (rows, cols), fp32 `scale` (rows, 1), the
    leading shape the rows came from and the dtype the linear should return. Lets one quantization feed several
    linears (the fused q/k/v GEMM) or come out of the kernel that made the activation (LayerNorm, GELU)."""

    data: torch.Tensor
    scale: torch.Tensor
    lead: tuple[int, ...]
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.lead, self.data.shape[-1]))

    def dequantize(self) -> torch.Tensor:
        return (self.data.float() * self.scale).to(self.dtype).reshape(self.shape)


def launch_quantize_rows(x: torch.Tensor, *, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton quantizer itself, whatever the device (CPU tensors run under TRITON_INTERPRET=1 in tests)."""
    rows, cols = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    qx = torch.empty((rows, cols), device=x.device, dtype=FP8_DTYPE)
    scale = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
    if cols <= _ONE_PASS_COLS:
        block = triton.next_power_of_2(cols)
        _quantize_row_once_kernel[(rows,)](x, qx, scale, cols, x.stride(0), BLOCK=block, GELU=gelu,
                                           num_warps=row_warps(block, "gelu" if gelu else "plain"))
    elif gelu:
        raise ValueError(f"the fused GELU quantizer takes rows up to {_ONE_PASS_COLS} wide, got {cols}")
    else:
        block = min(4096, triton.next_power_of_2(cols))
        _quantize_rows_fp8_kernel[(rows,)](x, qx, scale, cols, x.stride(0), x.stride(1), BLOCK=block, num_warps=8)
    return qx, scale


@opaque_to_compile
def quantize_rows_fp8(x: torch.Tensor, *, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row fp8 quantization of a 2-D tensor, optionally of GELU(tanh)(x): the Triton kernel on CUDA (one pass
    with the GELU fused, for rows up to 16384 wide), else the reference."""
    if x.dim() != 2:
        raise ValueError(f"quantize_rows_fp8 expects a 2-D tensor, got shape {tuple(x.shape)}")
    if HAVE_TRITON and x.is_cuda and (not gelu or x.shape[1] <= _ONE_PASS_COLS):
        return launch_quantize_rows(x, gelu=gelu)
    return quantize_rows_fp8_reference(x, gelu=gelu)


def quantize_activation(x: torch.Tensor, *, gelu: bool = False) -> Fp8Rows:
    """x (..., cols) -> Fp8Rows for an Fp8Linear, optionally through GELU(tanh) first."""
    x2 = x.reshape(-1, x.shape[-1])
    data, scale = quantize_rows_fp8(x2, gelu=gelu)
    return Fp8Rows(data, scale, tuple(x.shape[:-1]), x.dtype)


class Fp8Linear(nn.Module):
    """A Linear whose weight is fp8 e4m3 with one fp32 scale per output row; inputs quantized per token."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: torch.device | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_fp8", torch.zeros((out_features, in_features), dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones((1, out_features), dtype=torch.float32, device=device))
        self.register_buffer(
            "bias", torch.zeros(out_features, dtype=torch.bfloat16, device=device) if bias else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Module) -> Fp8Linear:
        weight = linear.weight.detach()
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=weight.device)
        q, scale = quantize_rows_fp8_reference(weight)
        out.weight_fp8.copy_(q)
        out.weight_scale.copy_(scale.view(1, -1))
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach().to(torch.bfloat16))
        return out

    @classmethod
    def from_int8(cls, layer: nn.Module) -> Fp8Linear:
        """Requantize a tile-scaled int8 linear (inference.quant.Int8Linear layout: int8_weight, scale, bias) to
        fp8 with row scales: the published -quant checkpoints then run on the fp8 tensor cores, which on H100
        are faster than our int8 GEMM with per-tile dequantisation (bench/README.md)."""
        weight = layer.int8_weight
        rows, cols = weight.shape
        tile_scale = layer.scale.float().repeat_interleave(128, 0).repeat_interleave(128, 1)[:rows, :cols]
        bias = getattr(layer, "bias", None)
        out = cls(cols, rows, bias=bias is not None, device=weight.device)
        q, scale = quantize_rows_fp8_reference(weight.float() * tile_scale)
        out.weight_fp8.copy_(q)
        out.weight_scale.copy_(scale.view(1, -1))
        if bias is not None:
            out.bias.copy_(bias.detach().to(torch.bfloat16))
        return out

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_fp8.float() * self.weight_scale.view(-1, 1)

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        """x: a tensor (quantized here, per token) or an already quantized Fp8Rows; out in x's dtype."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Fp8Linear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        # Not isinstance(x, Fp8Rows): tests reload this module, which makes a second Fp8Rows class.
        rows = quantize_activation(x) if isinstance(x, torch.Tensor) else x
        qx, sx = rows.data, rows.scale
        if qx.is_cuda:
            out = torch._scaled_mm(
                qx, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale, bias=self.bias,
                out_dtype=torch.bfloat16, use_fast_accum=FAST_ACCUM,
            )
        else:  # CPU: the same quantized numbers through fp32 math.
            out = (qx.float() * sx) @ self.dequantized_weight().t()
            if self.bias is not None:
                out = out + self.bias.float()
        return out.to(rows.dtype).reshape(*rows.lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def fuse_fp8_linears(layers: list[Fp8Linear]) -> Fp8Linear:
    """One Fp8Linear computing the given linears (same input) side by side: the caller splits its output. Row
    scales make this exact: each output column keeps its own weight scale. The parts are left as they are; a
    caller that keeps only the fused layer frees them (split_fp8_linear gives them back)."""
    in_features = {layer.in_features for layer in layers}
    if len(in_features) != 1:
        raise ValueError(f"fused linears must share in_features, got {sorted(in_features)}")
    biases = [layer.bias is not None for layer in layers]
    if any(biases) != all(biases):
        raise ValueError("fused linears must all have a bias or all have none")
    device = layers[0].weight_fp8.device
    fused = Fp8Linear(in_features.pop(), sum(layer.out_features for layer in layers), bias=all(biases), device=device)
    fused.weight_fp8 = torch.cat([layer.weight_fp8 for layer in layers])
    fused.weight_scale = torch.cat([layer.weight_scale for layer in layers], dim=1)
    if fused.bias is not None:
        fused.bias = torch.cat([layer.bias for layer in layers])
    return fused


def split_fp8_linear(fused: Fp8Linear, out_features: list[int]) -> list[Fp8Linear]:
    """The inverse of fuse_fp8_linears: separate layers (own copies) of the given output sizes."""
    if sum(out_features) != fused.out_features:
        raise ValueError(f"sizes {out_features} do not add up to the fused layer's {fused.out_features} outputs")
    parts = []
    start = 0
    for size in out_features:
        part = Fp8Linear(fused.in_features, size, bias=fused.bias is not None, device=fused.weight_fp8.device)
        part.weight_fp8 = fused.weight_fp8[start:start + size].clone()
        part.weight_scale = fused.weight_scale[:, start:start + size].clone()
        if fused.bias is not None:
            part.bias = fused.bias[start:start + size].clone()
        parts.append(part)
        start += size
    return parts


def _is_int8_linear(module: nn.Module) -> bool:
    return hasattr(module, "int8_weight") and hasattr(module, "scale") and hasattr(module, "in_features")


def convert_linears_to_fp8(model: nn.Module, skip: tuple[str, ...] = DEFAULT_SKIP, root: str = "blocks") -> int:
    """Swap every nn.Linear, and every int8 tile-quantized linear (inference.quant.Int8Linear), under
    `model.<root>` (all of model if root is empty) for an Fp8Linear, except modules whose own name is in `skip`.
    Converts one layer at a time so peak memory grows by one weight. Returns the count."""
    scope = getattr(model, root) if root else model
    count = 0
    for parent in list(scope.modules()):
        for name, child in list(parent.named_children()):
            if name in skip:
                continue
            if type(child) is nn.Linear:
                setattr(parent, name, Fp8Linear.from_linear(child))
            elif _is_int8_linear(child):
                setattr(parent, name, Fp8Linear.from_int8(child))
            else:
                continue
            del child
            count += 1
    return count
