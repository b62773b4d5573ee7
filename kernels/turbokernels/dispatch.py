"""The one place the model calls its ops. Each function has the signature of its twin in turbokernels.reference.

Backend choice: `set_backend(...)`, called by whoever owns the process's configuration (the GPU worker passes
TURBO_KERNELS through I2VPipeline.load, the CLI and benchmarks likewise):
- "reference": always the pure-PyTorch reference;
- "kernel": always the fast kernel (an error naming the reason if the op has none for these tensors);
- "auto" (default): the fast kernel on CUDA tensors whose shapes it supports, else the reference.

Kernels are Triton (kernels/turbokernels/sla_triton.py, which runs the Gluon kernel of kernels/turbokernels/sla_gluon.py on sm_90;
int8_linear.py, norms_triton.py), imported on first use so this module
imports on machines without CUDA or Triton. Under TRITON_INTERPRET=1 the "kernel" backend also runs them on CPU
tensors (Triton's interpreter), which is how the CPU tests check them; "auto" never picks the interpreter.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from turbokernels import reference

if TYPE_CHECKING:
    from turbokernels.fp8_linear import Fp8Rows

BACKENDS = ("auto", "reference", "kernel")
DEFAULT_BACKEND = "auto"
_backend = DEFAULT_BACKEND

# A check returns None when the kernel can take these arguments, else the reason it cannot.
Check = Callable[..., str | None]


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_sla(q, k, v, proj_l_weight, proj_l_bias, topk, block_q, block_k) -> str | None:
    problem = reference.sla_input_problem(q, k, v, kernel=True)
    if problem is not None:
        return problem
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q/k/v dtype {q.dtype}/{k.dtype}/{v.dtype}: the kernel takes bf16 or fp16"
    if not (_pow2(block_q) and _pow2(block_k) and block_q >= 16 and block_k >= 16):
        return f"block sizes {block_q}/{block_k} must be powers of two >= 16"
    return None


def _check_int8_linear(x, int8_weight, scale, bias) -> str | None:
    if int8_weight.dtype != torch.int8 or int8_weight.dim() != 2:
        return f"weight must be 2-D int8, got {int8_weight.dtype} {tuple(int8_weight.shape)}"
    if x.shape[-1] != int8_weight.shape[1]:
        return f"x has {x.shape[-1]} features, weight expects {int8_weight.shape[1]}"
    return None


def _check_quantize(w, block=128) -> str | None:
    if w.dim() != 2 or not _pow2(block) or block > 256:
        return f"needs a 2-D tensor and a power-of-two block <= 256, got {tuple(w.shape)} and {block}"
    return None


def _check_ln(x, shift, scale, eps) -> str | None:
    if x.dim() not in (2, 3) or x.shape[-1] > 65536:
        return f"x must be (B, L, C) or (L, C) with C <= 65536, got {tuple(x.shape)}"
    try:
        torch.broadcast_shapes(shift.shape, x.shape)
        torch.broadcast_shapes(scale.shape, x.shape)
    except RuntimeError:
        return f"shift {tuple(shift.shape)} / scale {tuple(scale.shape)} do not broadcast to x {tuple(x.shape)}"
    if torch.broadcast_shapes(shift.shape, x.shape) != x.shape:
        return "shift/scale would enlarge x"
    return None


def _check_residual(x, y, gate, shift=None, scale=None, eps=0.0, out_dtype=None) -> str | None:
    if y.shape != x.shape:
        return f"y {tuple(y.shape)} must have x's shape {tuple(x.shape)}"
    if gate is not None:
        try:
            fits = torch.broadcast_shapes(gate.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            return f"gate {tuple(gate.shape)} does not broadcast to x {tuple(x.shape)}"
    if x.dim() != 3:
        return f"x must be (B, L, C), got {tuple(x.shape)}"
    return None if shift is None else _check_ln(x, shift, scale, eps)


def _check_rms(x, weight, eps) -> str | None:
    if x.shape[-1] > 65536 or weight.shape != (x.shape[-1],):
        return f"x {tuple(x.shape)} with weight {tuple(weight.shape)}: needs weight (C,) and C <= 65536"
    return None


def _check_rope(x, cos, sin) -> str | None:
    if x.dim() != 4 or not _pow2(x.shape[-1] // 2) or cos.shape != (x.shape[1], x.shape[-1] // 2):
        return f"x must be (B, L, H, D) with D/2 a power of two and cos (L, D/2); got {tuple(x.shape)}, " \
               f"{tuple(cos.shape)}"
    return None


def _check_rms_rope(x, weight, eps, cos, sin, num_heads) -> str | None:
    if x.dim() != 3 or x.shape[-1] % num_heads:
        return f"x must be (B, L, C) with C divisible by {num_heads} heads, got {tuple(x.shape)}"
    d = x.shape[-1] // num_heads
    if not _pow2(d // 2) or cos.shape != (x.shape[1], d // 2):
        return f"head_dim {d} must be 2 * power of two and cos ({x.shape[1]}, {d // 2}), got {tuple(cos.shape)}"
    return None


# op name -> (module under kernels/, function name, argument check).
_KERNELS: dict[str, tuple[str, str, Check]] = {
    "sla_attention": ("sla_triton", "sla_attention", _check_sla),
    "int8_linear": ("int8_linear", "int8_linear", _check_int8_linear),
    "quantize_int8_blockwise": ("int8_linear", "quantize_int8_blockwise", _check_quantize),
    "layer_norm_modulate": ("norms_triton", "layer_norm_modulate", _check_ln),
    "layer_norm_modulate_fp8": ("norms_triton", "layer_norm_modulate_fp8", _check_ln),
    "residual_layer_norm_modulate": ("norms_triton", "residual_layer_norm_modulate", _check_residual),
    "gated_residual": ("norms_triton", "gated_residual", _check_residual),
    "rms_norm": ("norms_triton", "rms_norm", _check_rms),
    "apply_rope": ("norms_triton", "apply_rope", _check_rope),
    "rms_norm_rope": ("norms_triton", "rms_norm_rope", _check_rms_rope),
}


def set_backend(name: str | None) -> None:
    """Pick the backend for every op; None goes back to the default ("auto")."""
    global _backend
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _backend = DEFAULT_BACKEND if name is None else name


def get_backend() -> str:
    return _backend


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _load_kernel(module: str, function: str) -> Callable[..., Any] | None:
    try:
        mod = importlib.import_module(f"turbokernels.{module}")
    except ImportError:
        return None
    if not getattr(mod, "HAVE_TRITON", False):
        return None
    return getattr(mod, function)


def kernel_unavailable_reason(op: str, tensor: torch.Tensor, *args: Any) -> str | None:
    """None if the fast kernel of `op` can run these arguments (on this device), else why not."""
    entry = _KERNELS.get(op)
    if entry is None:
        return f"{op} has no fast kernel"
    if not (tensor.is_cuda or (_interpreting() and tensor.device.type == "cpu")):
        return f"tensors are on {tensor.device}, the kernels run on CUDA (or CPU under TRITON_INTERPRET=1)"
    if _load_kernel(entry[0], entry[1]) is None:
        return f"turbokernels.{entry[0]} is unavailable (Triton missing)"
    return entry[2](*args)


def _pick(op: str, tensor: torch.Tensor, *args: Any, fallback: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """The kernel of `op` or its reference (`fallback`, default the function of that name in turbokernels.reference)."""
    backend = get_backend()
    ref = fallback or getattr(reference, op)
    if backend == "reference":
        return ref
    reason = kernel_unavailable_reason(op, tensor, *args)
    if reason is None and (tensor.is_cuda or backend == "kernel"):
        entry = _KERNELS[op]
        return _load_kernel(entry[0], entry[1])
    if backend == "kernel":
        raise RuntimeError(f"no fast kernel for {op}: {reason} (backend 'kernel' was requested)")
    return ref


def sla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_l_weight: torch.Tensor,
    proj_l_bias: torch.Tensor,
    topk: float,
    block_q: int,
    block_k: int,
    *,
    pv_fp8: bool = False,
) -> torch.Tensor:
    """SLA; `pv_fp8` asks the kernel for an e4m3 P.V product (sla_triton.sla_attention). The reference stays
    exact: the fp8 product approximates it, held to cosine >= 0.999 by the GPU tests."""
    args = (q, k, v, proj_l_weight, proj_l_bias, topk, block_q, block_k)
    fn = _pick("sla_attention", q, *args)
    if fn is reference.sla_attention or not pv_fp8:
        return fn(*args)
    return fn(*args, pv_fp8=True)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # The reference is PyTorch SDPA, which is already a flash-attention kernel on CUDA.
    return reference.dense_attention(q, k, v)


def int8_linear(
    x: torch.Tensor, int8_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    args = (x, int8_weight, scale, bias)
    return _pick("int8_linear", x, *args)(*args)


def quantize_int8_blockwise(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    return _pick("quantize_int8_blockwise", w, w, block)(w, block)


def layer_norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """As the reference; `out_dtype` (default x's dtype) lets the kernel write e.g. bf16 from an fp32 stream in
    the same pass instead of a separate cast."""
    args = (x, shift, scale, eps)
    fn = _pick("layer_norm_modulate", x, *args)
    if out_dtype is None or out_dtype == x.dtype:
        return fn(*args)
    if fn is reference.layer_norm_modulate:
        return fn(*args).to(out_dtype)
    return fn(*args, out_dtype=out_dtype)


def layer_norm_modulate_fp8_reference(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp32 layer_norm_modulate of x (B, L, C), quantized per token: (fp8 (B*L, C), fp32 scale (B*L, 1))."""
    from turbokernels.fp8_linear import quantize_rows_fp8_reference

    out = reference.layer_norm_modulate(x.float(), shift, scale, eps)
    return quantize_rows_fp8_reference(out.reshape(-1, x.shape[-1]))


def layer_norm_modulate_fp8(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, dtype: torch.dtype
) -> Fp8Rows:
    """layer_norm_modulate straight to fp8 rows for Fp8Linear layers (no bf16 round trip, no separate quantize
    pass); `dtype` is what those linears return. One kernel on GPU."""
    from turbokernels.fp8_linear import Fp8Rows

    if x.dim() != 3:
        raise ValueError(f"layer_norm_modulate_fp8 expects x (B, L, C), got shape {tuple(x.shape)}")
    args = (x, shift, scale, eps)
    data, row_scale = _pick("layer_norm_modulate_fp8", x, *args, fallback=layer_norm_modulate_fp8_reference)(*args)
    return Fp8Rows(data, row_scale, tuple(x.shape[:-1]), dtype)


def gated_residual_reference(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """x + y * gate in fp32 (gate None: no gate)."""
    return x + (y.float() if gate is None else y.float() * gate)


def residual_layer_norm_modulate_reference(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor,
    eps: float, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x + y * gate, its layer_norm_modulate in out_dtype, per-row fp8 scales when out_dtype is fp8)."""
    x_new = gated_residual_reference(x, y, gate)
    if out_dtype == torch.float8_e4m3fn:
        return (x_new, *layer_norm_modulate_fp8_reference(x_new, shift, scale, eps))
    return x_new, reference.layer_norm_modulate(x_new, shift, scale, eps).to(out_dtype), None


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """The residual update x + y * gate of a block (x the fp32 stream, y a branch output), one pass on GPU."""
    args = (x, y, gate)
    return _pick("gated_residual", x, *args, fallback=gated_residual_reference)(*args)


def residual_norm(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor,
    eps: float, dtype: torch.dtype, *, fp8: bool,
) -> tuple[torch.Tensor, torch.Tensor | Fp8Rows]:
    """x + y * gate, then the modulated LayerNorm of the sum for the next linear, in one pass on GPU: returns
    (new fp32 stream, the norm's output in `dtype`, or as Fp8Rows for fp8 linears returning `dtype`)."""
    from turbokernels.fp8_linear import Fp8Rows

    args = (x, y, gate, shift, scale, eps, torch.float8_e4m3fn if fp8 else dtype)
    fn = _pick("residual_layer_norm_modulate", x, *args, fallback=residual_layer_norm_modulate_reference)
    x_new, out, row_scale = fn(*args)
    if fp8:
        return x_new, Fp8Rows(out, row_scale, tuple(x.shape[:-1]), dtype)
    return x_new, out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    args = (x, weight, eps)
    return _pick("rms_norm", x, *args)(*args)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    args = (x, cos, sin)
    return _pick("apply_rope", x, *args)(*args)


def rms_norm_rope_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """apply_rope(rms_norm(x).unflatten(-1, (num_heads, -1))): the q/k path of self-attention, (B, L, H, D) out."""
    normed = reference.rms_norm(x, weight, eps)
    return reference.apply_rope(normed.unflatten(-1, (num_heads, -1)), cos, sin)


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """RMSNorm over the full feature dim then 3-D RoPE per head, fused on GPU: x (B, L, C) -> (B, L, H, D)."""
    args = (x, weight, eps, cos, sin, num_heads)
    return _pick("rms_norm_rope", x, *args, fallback=rms_norm_rope_reference)(*args)


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Tables are built once per shape; the reference is already cheap, so there is no kernel for this.
    return reference.rope_tables(grid, head_dim, theta)
