"""The VAE's channel RMS norm fused with the SiLU that always follows it, in Triton.

The eager pair (F.normalize, * sqrt(C), * gamma, SiLU) makes about five passes over a feature map that is
hundreds of MB at 720p (96 channels x 4 frames x 1280x720 in bf16 = 708 MB); this kernel reads it once and
writes it once, with the statistics and the whole chain in fp32 and one rounding at the end (so results differ
from the eager bf16 chain by bf16 rounding only).

A [B, C, T, H, W] map is seen as [B, C, S] with S = T*H*W, which is one stride for both layouts the VAE uses:
contiguous (S stride 1) and channels_last_3d (C stride 1). Each program normalises BLOCK_S pixels over all C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

# F.normalize's floor on the L2 norm.
NORM_EPS = 1e-12


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.float().view(1, -1, *([1] * (ndim - 2)))


def rms_norm_silu_reference(
    x: torch.Tensor, gamma: torch.Tensor, scale: float, *, silu: bool = True, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Eager semantics in fp32: x (+ a per-channel bias, the previous conv's) / max(||x||_C, eps) * scale * gamma,
    then SiLU; result in x's dtype."""
    x32 = x.float() if bias is None else x.float() + _channel_view(bias, x.ndim)
    y = F.normalize(x32, dim=1, eps=NORM_EPS) * scale * _channel_view(gamma, x.ndim)
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


if HAVE_TRITON:

    @triton.jit
    def _rms_silu_kernel(
        X, G, BIAS, OUT, C, S, scale, eps,
        sxb, sxc, sxs, sob, soc, sos,
        APPLY_SILU: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    ):  # fmt: skip
        pid_s = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        # int64: an 81-frame 720p map at 96 channels has more than 2**31 elements.
        offs_s = (pid_s * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
        offs_c = tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & (offs_s[None, :] < S)
        x = tl.load(X + b * sxb + offs_c[:, None] * sxc + offs_s[None, :] * sxs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = tl.where(mask, x + tl.load(BIAS + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None], 0.0)
        norm = tl.sqrt(tl.sum(x * x, axis=0))
        inv = 1.0 / tl.maximum(norm, eps)
        g = tl.load(G + offs_c, mask=mask_c, other=0.0).to(tl.float32) * scale
        y = x * inv[None, :] * g[:, None]
        if APPLY_SILU:
            y = y * tl.sigmoid(y)
        tl.store(OUT + b * sob + offs_c[:, None] * soc + offs_s[None, :] * sos, y.to(OUT.dtype.element_ty), mask=mask)


def _flat_pixel_stride(x: torch.Tensor) -> int | None:
    """The one stride of the flattened T*H*W pixels of a 5-D map, or None if they are not one strided run."""
    _, _, t, h, w = x.shape
    st, sh, sw = x.stride(2), x.stride(3), x.stride(4)
    if (h == 1 or sh == w * sw) and (t == 1 or st == h * w * sw):
        return sw
    return None


def rms_norm_silu(
    x: torch.Tensor,
    gamma: torch.Tensor,
    scale: float,
    *,
    silu: bool = True,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused channel RMS norm (+ SiLU) of a [B, C, T, H, W] map; `out` (same shape, any pixel-strided layout, e.g.
    a frame slice of a larger buffer) receives the result when given. Same layout as x when allocated here.
    `bias` (per channel) is added to x first, in fp32: the bias of the conv that made x, so that conv skips its own
    pass over its output to add it."""
    if x.ndim != 5:
        raise ValueError(f"expects a [B, C, T, H, W] map, got shape {tuple(x.shape)}")
    if _flat_pixel_stride(x) is None:
        x = x.contiguous()
    if out is None:
        out = torch.empty_like(x)  # keeps x's (dense) layout
    if out.shape != x.shape or _flat_pixel_stride(out) is None:
        raise ValueError("out must have x's shape and one stride over the T*H*W pixels")
    b, c, t, h, w = x.shape
    s = t * h * w
    block_c = triton.next_power_of_2(c)
    # About 8K elements a program: enough bytes in flight per SM, registers still fine at fp32.
    block_s = max(8, 8192 // block_c)
    grid = (triton.cdiv(s, block_s), b)
    _rms_silu_kernel[grid](
        x, gamma, gamma if bias is None else bias, out, c, s, float(scale), NORM_EPS,
        x.stride(0), x.stride(1), _flat_pixel_stride(x), out.stride(0), out.stride(1), _flat_pixel_stride(out),
        APPLY_SILU=silu, HAS_BIAS=bias is not None, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=8 if block_c * block_s >= 8192 else 4,
    )  # fmt: skip
    return out


# ---- residual add with the convs' biases ------------------------------------------------------------------------


def add_bias_residual_reference(y: torch.Tensor, skip: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y <- y + skip + bias (per channel), in fp32 with one rounding; returns y."""
    return y.copy_(y.float() + skip.float() + _channel_view(bias, y.ndim))


if HAVE_TRITON:

    @triton.jit
    def _add_bias_residual_kernel(
        Y, SKIP, BIAS, C, S, syb, syc, sys, skb, skc, sks, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr
    ):
        pid_s = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        offs_s = (pid_s * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
        offs_c = tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & (offs_s[None, :] < S)
        y_ptr = Y + b * syb + offs_c[:, None] * syc + offs_s[None, :] * sys
        y = tl.load(y_ptr, mask=mask, other=0.0).to(tl.float32)
        k = tl.load(SKIP + b * skb + offs_c[:, None] * skc + offs_s[None, :] * sks, mask=mask, other=0.0)
        bias = tl.load(BIAS + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        tl.store(y_ptr, (y + k.to(tl.float32) + bias[:, None]).to(Y.dtype.element_ty), mask=mask)


def add_bias_residual_(y: torch.Tensor, skip: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The residual block's end in one pass: y <- y + skip + bias, y the last conv's output computed without its
    bias (`bias` is that bias, plus the shortcut conv's when skip came from one without its own). fp32 inside, one
    rounding. Returns y."""
    if y.ndim != 5 or skip.shape != y.shape:
        raise ValueError(f"expects two [B, C, T, H, W] maps of one shape, got {tuple(y.shape)} and {tuple(skip.shape)}")
    if not HAVE_TRITON or _flat_pixel_stride(y) is None or _flat_pixel_stride(skip) is None:
        return add_bias_residual_reference(y, skip, bias)
    b, c, t, h, w = y.shape
    s = t * h * w
    block_c = triton.next_power_of_2(c)
    block_s = max(8, 8192 // block_c)
    _add_bias_residual_kernel[(triton.cdiv(s, block_s), b)](
        y, skip, bias, c, s, y.stride(0), y.stride(1), _flat_pixel_stride(y),
        skip.stride(0), skip.stride(1), _flat_pixel_stride(skip), BLOCK_C=block_c, BLOCK_S=block_s, num_warps=8,
    )  # fmt: skip
    return y


# ---- frames equal to the last one (the VAE encode's steady frames) ---------------------------------------------


def differing_frames_reference(x: torch.Tensor) -> torch.Tensor:
    """bool [T-1]: whether frame t of a [B, C, T, H, W] map differs anywhere from the last frame."""
    return (x[:, :, :-1] != x[:, :, -1:]).transpose(1, 2).flatten(2).any(dim=2).any(dim=0)


if HAVE_TRITON:

    @triton.jit
    def _differs_from_last_kernel(X, FLAGS, frame_stride, batch_stride, last_offset, n, BLOCK: tl.constexpr):
        # One program: BLOCK elements of one frame (dim 1 of the grid) of one batch item (dim 2), compared with
        # the same elements of the last frame; any difference sets the frame's flag (all writers write 1).
        pid = tl.program_id(0)
        frame = tl.program_id(1).to(tl.int64)
        base = tl.program_id(2).to(tl.int64) * batch_stride
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        a = tl.load(X + base + frame * frame_stride + offs, mask=mask, other=0.0)
        b = tl.load(X + base + last_offset + offs, mask=mask, other=0.0)
        differs = tl.max((a != b).to(tl.int32), axis=0)
        tl.atomic_max(FLAGS + frame, differs, sem="relaxed")


def differing_frames(x: torch.Tensor) -> torch.Tensor:
    """differing_frames_reference in one read of x (no full-size temporary), for a map whose every frame is one
    dense run of C*H*W elements (channels_last_3d); other layouts take the reference. Exact: compares bits' values
    (NaN differs from everything, as with !=)."""
    if x.ndim != 5:
        raise ValueError(f"expects a [B, C, T, H, W] map, got shape {tuple(x.shape)}")
    b, c, t, h, w = x.shape
    if t < 2:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    if not HAVE_TRITON or not x.is_contiguous(memory_format=torch.channels_last_3d):
        return differing_frames_reference(x)
    n = c * h * w
    flags = torch.zeros(t - 1, dtype=torch.int32, device=x.device)
    block = 4096
    grid = (triton.cdiv(n, block), t - 1, b)
    _differs_from_last_kernel[grid](x, flags, x.stride(2), x.stride(0), (t - 1) * x.stride(2), n, BLOCK=block,
                                    num_warps=8)  # fmt: skip
    return flags.bool()


# ---- scaled softmax of fp32 scores into two-term low-precision probabilities (the VAE's attention) -------------

# Rows longer than this take the reference (one program holds a whole row in registers).
SOFTMAX_MAX_ROW = 32768


def scaled_softmax_split_reference(
    s: torch.Tensor, scale: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """p = softmax(s * scale) over the last dim in fp32, as hi + lo in `dtype`: hi = p rounded, lo = what hi
    missed, rounded (so hi + lo is p to about 16 bits: a product with both terms is as exact as one with fp32 p)."""
    p = torch.softmax(s.float() * scale, dim=-1)
    hi = p.to(dtype)
    return hi, (p - hi.float()).to(dtype)


if HAVE_TRITON:

    @triton.jit
    def _scaled_softmax_split_kernel(S, HI, LO, L, stride_s, stride_p, scale_log2e, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < L
        x = tl.load(S + row * stride_s + offs, mask=mask, other=-float("inf")).to(tl.float32) * scale_log2e
        e = tl.exp2(x - tl.max(x, axis=0))
        p = e / tl.sum(e, axis=0)
        hi = p.to(HI.dtype.element_ty)
        tl.store(HI + row * stride_p + offs, hi, mask=mask)
        tl.store(LO + row * stride_p + offs, (p - hi.to(tl.float32)).to(LO.dtype.element_ty), mask=mask)


def scaled_softmax_split(s: torch.Tensor, scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """scaled_softmax_split_reference in one read of the fp32 scores (PyTorch takes a scale pass, the softmax and
    two casts over an [L, L] map that is 0.8 GB per 720p frame)."""
    n = s.shape[-1]
    if not HAVE_TRITON or n > SOFTMAX_MAX_ROW or s.stride(-1) != 1:
        return scaled_softmax_split_reference(s, scale, dtype)
    rows = s.reshape(-1, n)
    hi = torch.empty(rows.shape, dtype=dtype, device=s.device)
    lo = torch.empty_like(hi)
    block = triton.next_power_of_2(n)
    _scaled_softmax_split_kernel[(rows.shape[0],)](
        rows, hi, lo, n, rows.stride(0), hi.stride(0), float(scale) * 1.4426950408889634, BLOCK=block,
        num_warps=16 if block >= 16384 else 8 if block >= 4096 else 4,
    )  # fmt: skip
    return hi.view(s.shape), lo.view(s.shape)
