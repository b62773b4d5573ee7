"""fp8 (e4m3) linears for bf16 checkpoints on Hopper: weights quantized once at load time, per output row;
activations per token at run time by a Triton kernel; the GEMM is cuBLASLt's row-wise scaled fp8 product
(torch._scaled_mm), bf16 out with the bias fused.

Error: e4m3 keeps 3 mantissa bits, so each operand carries ~2% relative rounding noise; a block linear's output
lands near 3% relative (Frobenius) error against bf16 (measured numbers in bench/README.md). The int8 path with
128x128 tiles (kernels/int8_linear.py) is more accurate; fp8 is the fast path for bf16 checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.graphs import opaque_to_compile

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
_MIN_AMAX = 1e-12
# Linears inside the blocks that stay in their own precision (SLA's tiny fp32 head-dim projection).
DEFAULT_SKIP = ("proj_l",)



if HAVE_TRITON:

    @triton.jit
    def _quantize_rows_fp8_kernel(X, QX, SCALE, cols, sxr, sxc, BLOCK: tl.constexpr):
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


def quantize_rows_fp8_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 e4m3 [rows, cols], fp32 scale [rows, 1]) with scale = absmax / 448 per row; pure PyTorch."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_MIN_AMAX) / FP8_MAX
    return (xf / scale).to(FP8_DTYPE), scale


@opaque_to_compile
def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row fp8 quantization of a 2-D tensor: the Triton kernel where it can run, else the reference."""
    if x.dim() != 2:
        raise ValueError(f"quantize_rows_fp8 expects a 2-D tensor, got shape {tuple(x.shape)}")
    if not (HAVE_TRITON and x.is_cuda):
        return quantize_rows_fp8_reference(x)
    rows, cols = x.shape
    qx = torch.empty((rows, cols), device=x.device, dtype=FP8_DTYPE)
    scale = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
    block = min(4096, triton.next_power_of_2(cols))
    _quantize_rows_fp8_kernel[(rows,)](x, qx, scale, cols, x.stride(0), x.stride(1), BLOCK=block, num_warps=8)
    return qx, scale


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Fp8Linear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        qx, sx = quantize_rows_fp8(x2)
        if x.is_cuda:
            out = torch._scaled_mm(
                qx, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale, bias=self.bias,
                out_dtype=torch.bfloat16,
            )
        else:  # CPU: the same quantized numbers through fp32 math.
            out = (qx.float() * sx) @ self.dequantized_weight().t()
            if self.bias is not None:
                out = out + self.bias.float()
        return out.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


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
