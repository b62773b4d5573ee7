"""Row-wise norms in Triton: LayerNorm (no affine) fused with modulation, RMSNorm, and RMSNorm fused with 3-D RoPE.

Each is one read and one write per element, against several passes for the eager reference; statistics in fp32.
Semantics of turbokernels.reference.layer_norm_modulate / rms_norm / apply_rope.
"""

from __future__ import annotations

import torch

from turbokernels.torch_compile import opaque_to_compile

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False



if HAVE_TRITON:

    @triton.jit
    def _ln_modulate_kernel(
        X, Y, GATE, XOUT, SHIFT, SCALE, OUT, ROW_SCALE, seq_len, cols, eps,
        sxb, sxl, syb, syl, sgb, sgl, sshb, sshl, sscb, sscl, sob, sol,
        BLOCK: tl.constexpr, QUANT: tl.constexpr, ADD: tl.constexpr, GATED: tl.constexpr, NORM: tl.constexpr,
    ):
        # ADD: the residual update x + y * gate comes first (written to XOUT), so a block's residual add and the
        # norm after it read the stream once. NORM: then the modulated LayerNorm of the (updated) row.
        row = tl.program_id(0)
        b = row // seq_len
        pos = row % seq_len
        offs = tl.arange(0, BLOCK)
        mask = offs < cols
        x = tl.load(X + b * sxb + pos * sxl + offs, mask=mask, other=0.0).to(tl.float32)
        if ADD:
            y = tl.load(Y + b * syb + pos * syl + offs, mask=mask, other=0.0).to(tl.float32)
            if GATED:
                y = y * tl.load(GATE + b * sgb + pos * sgl + offs, mask=mask, other=0.0).to(tl.float32)
            x = x + y
            tl.store(XOUT + row * cols + offs, x, mask=mask)
        if NORM:
            mean = tl.sum(x, axis=0) / cols
            diff = tl.where(mask, x - mean, 0.0)
            var = tl.sum(diff * diff, axis=0) / cols
            normed = diff * tl.rsqrt(var + eps)
            shift = tl.load(SHIFT + b * sshb + pos * sshl + offs, mask=mask, other=0.0).to(tl.float32)
            scale = tl.load(SCALE + b * sscb + pos * sscl + offs, mask=mask, other=0.0).to(tl.float32)
            out = normed * (1.0 + scale) + shift
            if QUANT:
                # fp8 for the next linear: the row's absmax is at hand, so quantizing costs no extra pass.
                row_scale = tl.maximum(tl.max(tl.where(mask, tl.abs(out), 0.0), axis=0), 1e-12) / 448.0
                out = out / row_scale
                tl.store(ROW_SCALE + row, row_scale)
            tl.store(OUT + b * sob + pos * sol + offs, out.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_norm_kernel(X, W, OUT, cols, eps, sxr, sor, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < cols
        x = tl.load(X + row * sxr + offs, mask=mask, other=0.0).to(tl.float32)
        inv = tl.rsqrt(tl.sum(x * x, axis=0) / cols + eps)
        w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + row * sor + offs, (x * inv * w).to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_rows_kernel(
        X, W, COS, SIN, OUT, seq_len, cols, eps, sxb, sxl, sob, sol, scl,
        HALF_D: tl.constexpr, BLOCK_PAIRS: tl.constexpr, APPLY_NORM: tl.constexpr,
    ):
        # One token: its heads side by side form a row of cols = H * D values, seen as cols/2 adjacent pairs;
        # pair p belongs to head p // HALF_D and takes angle p % HALF_D of this token's cos/sin row. The row is
        # loaded and stored contiguously and split into (even, odd) in registers: strided even/odd accesses
        # halved the useful bandwidth.
        row = tl.program_id(0)
        b = row // seq_len
        pos = row % seq_len
        offs = tl.arange(0, 2 * BLOCK_PAIRS)
        mask = offs < cols
        x = tl.load(X + b * sxb + pos * sxl + offs, mask=mask, other=0.0).to(tl.float32)
        if APPLY_NORM:
            inv = tl.rsqrt(tl.sum(x * x, axis=0) / cols + eps)
            w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
            # The reference rounds the norm's output to x's dtype before rotating; do the same.
            x = (x * inv * w).to(OUT.dtype.element_ty).to(tl.float32)
        even, odd = tl.split(tl.reshape(x, (BLOCK_PAIRS, 2)))
        pairs = tl.arange(0, BLOCK_PAIRS)
        pair_ok = pairs < cols // 2
        angle = pairs % HALF_D
        c = tl.load(COS + pos * scl + angle, mask=pair_ok, other=0.0)
        s = tl.load(SIN + pos * scl + angle, mask=pair_ok, other=0.0)
        out = tl.reshape(tl.join(even * c - odd * s, even * s + odd * c), (2 * BLOCK_PAIRS,))
        tl.store(OUT + b * sob + pos * sol + offs, out.to(OUT.dtype.element_ty), mask=mask)


def row_warps(block: int, kind: str = "plain") -> int:
    """Warps for a kernel that holds one row of `block` elements per program (the row kernels here and in
    turbokernels.fp8_linear). By kind, as `python -m bench.kernels_micro --sections rows` measured (numbers in
    bench/README.md): "layernorm" (the modulated LayerNorm, with or without the residual add) runs best with 4 warps
    on 5120-wide rows, "gelu" (the FFN's GELU + fp8 quantizer) with 32 on 13824-wide rows; the plain quantizer and
    RMSNorm+RoPE are fastest at the default."""
    if kind == "layernorm" and block <= 8192:
        return 4
    if kind == "gelu" and block >= 16384:
        return 32
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def _expand_rows(t: torch.Tensor | None, b: int, length: int, cols: int) -> torch.Tensor | None:
    """t broadcast to (b, length, cols) with unit stride along cols; broadcast dims get stride 0, so one kernel
    serves per-sample and per-token modulation."""
    if t is None:
        return None
    t = t.expand(b, length, cols)
    return t if t.stride(-1) == 1 else t.contiguous()


def _ln_modulate(x, shift, scale, eps, out_dtype, quantize, *, y=None, gate=None, norm=True):
    """Launch the row kernel; returns (x + y * gate or None, normed out or None, row scale or None)."""
    b, length, cols = x.shape
    x, y, gate = (_expand_rows(t, b, length, cols) for t in (x, y, gate))
    shift_e, scale_e = (_expand_rows(t, b, length, cols) if norm else x for t in (shift, scale))
    x_out = torch.empty(x.shape, device=x.device, dtype=torch.float32) if y is not None else None
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype) if norm else None
    row_scale = torch.empty((b * length, 1), device=x.device, dtype=torch.float32) if quantize else None
    # Pointers a launch does not use still need a tensor: any of the others serves.
    y_arg, gate_arg = (y if y is not None else x), (gate if gate is not None else x)
    block = triton.next_power_of_2(cols)
    _ln_modulate_kernel[(b * length,)](
        x, y_arg, gate_arg, x_out if x_out is not None else x, shift_e, scale_e, out if norm else x,
        row_scale if quantize else x, length, cols, eps,
        x.stride(0), x.stride(1), y_arg.stride(0), y_arg.stride(1), gate_arg.stride(0), gate_arg.stride(1),
        shift_e.stride(0), shift_e.stride(1), scale_e.stride(0), scale_e.stride(1),
        (out if norm else x).stride(0), (out if norm else x).stride(1),
        BLOCK=block, QUANT=quantize, ADD=y is not None, GATED=gate is not None, NORM=norm,
        num_warps=row_warps(block, "layernorm"),
    )
    return x_out, out, row_scale


@opaque_to_compile
def layer_norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Drop-in for the reference: x (B, L, C) (or (L, C)); shift/scale broadcastable to x, e.g. (B, 1, C).
    The result is written in `out_dtype` (default x's dtype)."""
    if x.dim() == 2:
        return layer_norm_modulate(x[None], shift, scale, eps, out_dtype)[0]
    if x.dim() != 3:
        raise ValueError(f"layer_norm_modulate kernel expects x of 2 or 3 dims, got shape {tuple(x.shape)}")
    return _ln_modulate(x, shift, scale, eps, out_dtype or x.dtype, False)[1]


@opaque_to_compile
def layer_norm_modulate_fp8(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """layer_norm_modulate quantized per token to fp8 e4m3 in the same pass: x (B, L, C) -> (fp8 (B*L, C),
    fp32 scale (B*L, 1)) with scale = row absmax / 448, as turbokernels.fp8_linear.quantize_rows_fp8 would give."""
    if x.dim() != 3:
        raise ValueError(f"layer_norm_modulate_fp8 expects x (B, L, C), got shape {tuple(x.shape)}")
    _, out, row_scale = _ln_modulate(x, shift, scale, eps, torch.float8_e4m3fn, True)
    return out.view(-1, x.shape[-1]), row_scale


@opaque_to_compile
def residual_layer_norm_modulate(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor,
    eps: float, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x (B, L, C) fp32 stream, y (B, L, C) a branch output, gate broadcastable (or None for 1): returns
    (x + y * gate in fp32, layer_norm_modulate of that sum in out_dtype, row scales if out_dtype is fp8 else None).
    fp8 output comes as (B*L, C) rows with their (B*L, 1) scales, as layer_norm_modulate_fp8 gives."""
    if x.dim() != 3 or y.shape != x.shape:
        raise ValueError(f"residual norm expects x and y of one (B, L, C) shape, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    quantize = out_dtype == torch.float8_e4m3fn
    x_new, out, row_scale = _ln_modulate(x, shift, scale, eps, out_dtype, quantize, y=y, gate=gate)
    return x_new, (out.view(-1, x.shape[-1]) if quantize else out), row_scale


@opaque_to_compile
def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """x + y * gate in fp32 (x, y (B, L, C); gate broadcastable or None): one pass instead of eager's three."""
    if x.dim() != 3 or y.shape != x.shape:
        raise ValueError(f"gated residual expects x and y of one (B, L, C) shape, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    return _ln_modulate(x, None, None, 0.0, torch.float32, False, y=y, gate=gate, norm=False)[0]


@opaque_to_compile
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Drop-in for the reference: RMSNorm over the last dim of x (any leading shape)."""
    cols = x.shape[-1]
    x2 = x.reshape(-1, cols)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], cols), device=x.device, dtype=x.dtype)
    block = triton.next_power_of_2(cols)
    _rms_norm_kernel[(x2.shape[0],)](x2, weight, out, cols, eps, x2.stride(0), out.stride(0), BLOCK=block,
                                     num_warps=row_warps(block))
    return out.view(x.shape)


def _rope_rows(x, weight, eps, cos, sin, num_heads, apply_norm):
    b, length, cols = x.shape
    d = cols // num_heads
    if d * num_heads != cols or tuple(cos.shape) != (length, d // 2):
        raise ValueError(f"RoPE kernel: x {tuple(x.shape)} with {num_heads} heads needs cos/sin of shape "
                         f"({length}, {d // 2}), got {tuple(cos.shape)}")
    if x.stride(2) != 1:
        x = x.contiguous()
    cos_c, sin_c = cos.float().contiguous(), sin.float().contiguous()
    out = torch.empty((b, length, cols), device=x.device, dtype=x.dtype)
    block = triton.next_power_of_2(cols // 2)
    _rope_rows_kernel[(b * length,)](
        x, weight if weight is not None else cos_c, cos_c, sin_c, out, length, cols, eps,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1), cos_c.stride(0),
        HALF_D=d // 2, BLOCK_PAIRS=block, APPLY_NORM=apply_norm, num_warps=row_warps(block),
    )
    return out.view(b, length, num_heads, d)


@opaque_to_compile
def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """apply_rope(rms_norm(x, weight, eps).unflatten(-1, (num_heads, -1)), cos, sin) in one pass.

    x (B, L, C) with C = num_heads * D; cos/sin (L, D//2) fp32. Returns (B, L, num_heads, D) in x's dtype."""
    return _rope_rows(x, weight, eps, cos, sin, num_heads, True)


@opaque_to_compile
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Drop-in for the reference: x (B, L, H, D), cos/sin (L, D//2)."""
    b, length, heads, d = x.shape
    if x.stride(3) != 1 or x.stride(2) != d:  # heads must sit side by side in each token's row
        x = x.contiguous()
    rows = x.as_strided((b, length, heads * d), (x.stride(0), x.stride(1), 1))
    return _rope_rows(rows, None, 0.0, cos, sin, heads, False)
