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


def rms_norm_silu_reference(x: torch.Tensor, gamma: torch.Tensor, scale: float, *, silu: bool = True) -> torch.Tensor:
    """Eager semantics in fp32: x / max(||x||_C, eps) * scale * gamma, then SiLU; result in x's dtype."""
    y = F.normalize(x.float(), dim=1, eps=NORM_EPS) * scale * gamma.float().view(1, -1, *([1] * (x.ndim - 2)))
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


if HAVE_TRITON:

    @triton.jit
    def _rms_silu_kernel(
        X, G, OUT, C, S, scale, eps,
        sxb, sxc, sxs, sob, soc, sos,
        APPLY_SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    ):  # fmt: skip
        pid_s = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        # int64: an 81-frame 720p map at 96 channels has more than 2**31 elements.
        offs_s = (pid_s * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
        offs_c = tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & (offs_s[None, :] < S)
        x = tl.load(X + b * sxb + offs_c[:, None] * sxc + offs_s[None, :] * sxs, mask=mask, other=0.0).to(tl.float32)
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
    x: torch.Tensor, gamma: torch.Tensor, scale: float, *, silu: bool = True, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Fused channel RMS norm (+ SiLU) of a [B, C, T, H, W] map; `out` (same shape, any pixel-strided layout, e.g.
    a frame slice of a larger buffer) receives the result when given. Same layout as x when allocated here."""
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
        x, gamma, out, c, s, float(scale), NORM_EPS,
        x.stride(0), x.stride(1), _flat_pixel_stride(x), out.stride(0), out.stride(1), _flat_pixel_stride(out),
        APPLY_SILU=silu, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=8 if block_c * block_s >= 8192 else 4,
    )  # fmt: skip
    return out
