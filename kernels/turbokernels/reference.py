"""Pure-PyTorch reference of every op the DiT uses (spec: shared/docs/WAN22_I2V_SPEC.md sections 2 and 3).

These are the ground truth for the fast kernels: each kernel is tested against the function of the same name
here. Numerics favour clarity and accuracy (fp32 math) over speed; the model reaches them through turbokernels.dispatch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Quantized checkpoints store scale = absmax / 128 per tile; the quantizer maps the tile onto [-128, 128] and
# clamps the single value that lands on +128 into int8.
INT8_SCALE_DIVISOR = 128.0
INT8_TILE = 128
# Upstream's quantizer (TurboDiffusion ops/quant) starts its absmax reduction at this floor: a zero tile gets a
# finite multiplier (its values stay 0) and stores scale 1e-8 / 128, and tiles below it are quantized against it.
INT8_MIN_AMAX = 1e-8


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full softmax attention, q/k/v (B, H, L, D), scale 1/sqrt(D)."""
    return F.scaled_dot_product_attention(q, k, v)


def _block_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over consecutive blocks of `block` tokens along dim -2; a last partial block averages its real tokens."""
    b, h, length, d = x.shape
    n_blocks = math.ceil(length / block)
    pad = n_blocks * block - length
    sums = F.pad(x, (0, 0, 0, pad)).view(b, h, n_blocks, block, d).sum(dim=3)
    counts = torch.full((n_blocks,), float(block), dtype=x.dtype, device=x.device)
    counts[-1] = length - (n_blocks - 1) * block
    return sums / counts[:, None]


def sla_block_map(q: torch.Tensor, k: torch.Tensor, topk: float, block_q: int, block_k: int) -> torch.Tensor:
    """Boolean (B, H, n_qblocks, n_kblocks): which key blocks each query block attends to exactly.

    Scores come from mean-pooled q against mean-pooled (k - mean_L k) ("smoothed" keys, so a shared offset in k
    does not dominate the ranking); each query block keeps its top max(1, int(topk * n_kblocks)) key blocks.
    """
    qf = q.float()
    kf = k.float()
    pooled_q = _block_mean(qf, block_q)
    pooled_k = _block_mean(kf - kf.mean(dim=-2, keepdim=True), block_k)
    score = pooled_q @ pooled_k.transpose(-1, -2)
    n_kblocks = score.shape[-1]
    keep = min(n_kblocks, max(1, int(topk * n_kblocks)))
    chosen = torch.topk(score, keep, dim=-1).indices
    block_map = torch.zeros_like(score, dtype=torch.bool)
    block_map.scatter_(-1, chosen, True)
    return block_map


def _linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """phi(q) (phi(k)^T v) / (1e-5 + phi(q) . sum_L phi(k)), phi = softmax over the head dim; fp32 in and out."""
    phi_q = torch.softmax(q, dim=-1)
    phi_k = torch.softmax(k, dim=-1)
    kv = phi_k.transpose(-1, -2) @ v
    k_sum = phi_k.sum(dim=-2, keepdim=True)
    normaliser = 1e-5 + (phi_q * k_sum).sum(dim=-1, keepdim=True)
    return (phi_q @ kv) / normaliser


# Elements of the token-level mask (and score matrix) per pass of the sparse branch, so long sequences
# (75,600 tokens x 40 heads at 720p) are handled a few query blocks at a time.
_SPARSE_PASS_ELEMENTS = 1 << 28


# Head sizes the SLA kernels (turbokernels.sla_triton) are built for; the reference takes any.
SLA_KERNEL_HEAD_DIMS = (16, 32, 64, 128)


def sla_input_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kernel: bool = False) -> str | None:
    """What is wrong with SLA's inputs, or None: q, k, v must share one (B, H, L, D) shape, and for the kernels
    (`kernel`) D must be one of SLA_KERNEL_HEAD_DIMS. One rule for the reference, the kernels and the dispatcher."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        return f"q, k, v must share one (B, H, L, D) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if kernel and q.shape[-1] not in SLA_KERNEL_HEAD_DIMS:
        return f"head_dim {q.shape[-1]} is not one of {'/'.join(map(str, SLA_KERNEL_HEAD_DIMS))}"
    return None


def sla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_l_weight: torch.Tensor,
    proj_l_bias: torch.Tensor,
    topk: float,
    block_q: int,
    block_k: int,
) -> torch.Tensor:
    """Sparse-linear attention as the TurboDiffusion checkpoints were trained (spec section 3).

    q, k, v: (B, H, L, D). Returns (B, H, L, D) in q's dtype: exact softmax attention over the selected key blocks
    plus proj_l(linear attention over all keys). L need not be a multiple of the block sizes.
    """
    problem = sla_input_problem(q, k, v)
    if problem is not None:
        raise ValueError(f"SLA: {problem}")
    length = q.shape[-2]
    block_map = sla_block_map(q, k, topk, block_q, block_k)
    qf, kf, vf = q.float(), k.float(), v.float()

    # Token-level key mask: each key block expanded to its tokens, cut at L.
    key_mask = block_map.repeat_interleave(block_k, dim=-1)[..., :length]
    batch_heads = q.shape[0] * q.shape[1]
    rows_per_pass = max(block_q, (_SPARSE_PASS_ELEMENTS // (batch_heads * length * block_q)) * block_q)
    sparse = torch.empty_like(qf)
    for start in range(0, length, rows_per_pass):
        stop = min(length, start + rows_per_pass)
        rows = key_mask[:, :, start // block_q : math.ceil(stop / block_q)].repeat_interleave(block_q, dim=-2)
        rows = rows[:, :, : stop - start]
        sparse[:, :, start:stop] = F.scaled_dot_product_attention(qf[:, :, start:stop], kf, vf, attn_mask=rows)

    linear = _linear_attention(qf, kf, vf)
    linear = F.linear(linear, proj_l_weight.float(), proj_l_bias.float())
    return (sparse + linear).to(q.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Int8 W8A8 linear
# ---------------------------------------------------------------------------------------------------------------


def _tile_absmax(x: torch.Tensor, block: int) -> torch.Tensor:
    """absmax of every block x block tile of a 2-D tensor (edge tiles cover what is left)."""
    rows, cols = x.shape
    n_r, n_c = math.ceil(rows / block), math.ceil(cols / block)
    padded = F.pad(x.abs(), (0, n_c * block - cols, 0, n_r * block - rows))
    return padded.view(n_r, block, n_c, block).amax(dim=(1, 3))


def _expand_tiles(tile_values: torch.Tensor, shape: torch.Size, block: int) -> torch.Tensor:
    """Per-tile values broadcast back to every element of a `shape` tensor."""
    expanded = tile_values.repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)
    return expanded[: shape[0], : shape[1]]


def quantize_int8_blockwise(w: torch.Tensor, block: int = INT8_TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per block x block tile: returns (int8 [rows, cols], fp32 scale [ceil(rows/b), ceil(cols/b)]).

    Bit for bit upstream's CUDA quantizer, in fp32: amax = max(absmax of the tile, 1e-8); each value is
    x * (128 / amax), rounded half to even and clamped to [-128, 127]; the stored scale is amax / 128 (the
    checkpoints' convention; dequantized value = int8 * scale of its tile). Multiplying by 128 / amax is not the
    same as dividing by amax / 128: the two roundings send a few values per million to different integers.
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_int8_blockwise expects a 2-D tensor, got shape {tuple(w.shape)}")
    wf = w.float()
    amax = _tile_absmax(wf, block).clamp_min(INT8_MIN_AMAX)
    multiplier = _expand_tiles(INT8_SCALE_DIVISOR / amax, wf.shape, block)
    quantized = torch.round(wf * multiplier).clamp_(-128, 127).to(torch.int8)
    return quantized, amax / INT8_SCALE_DIVISOR


def dequantize_int8_blockwise(quantized: torch.Tensor, scale: torch.Tensor, block: int = INT8_TILE) -> torch.Tensor:
    """fp32 values of a tile-quantized int8 tensor."""
    return quantized.float() * _expand_tiles(scale.float(), quantized.shape, block)


def int8_linear(
    x: torch.Tensor, int8_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """W8A8 linear: x (..., in) quantized per 128x128 tile of its (tokens, in) view, int8 weight [out, in] with
    per-tile `scale`; the int8 GEMM with per-tile dequantisation is computed here as fp32 math on dequantised
    values (the same numbers up to fp32 rounding). Returns (..., out) in x's dtype."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    qx, sx = quantize_int8_blockwise(x2, INT8_TILE)
    xq = dequantize_int8_blockwise(qx, sx, INT8_TILE)
    wq = dequantize_int8_blockwise(int8_weight, scale, INT8_TILE)
    out = xq @ wq.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*lead, int8_weight.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------------------------------------------


def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine (fp32) then `* (1 + scale) + shift`; shift/scale broadcast against x
    (e.g. (B, 1, C) against (B, L, C)). Returns x's dtype."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return (normed * (1 + scale.float()) + shift.float()).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32, times `weight`. Returns x's dtype."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embedding (3-D)
# ---------------------------------------------------------------------------------------------------------------


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real dims given to (t, h, w): h and w get 2*(d//6) each, t the rest (44/42/42 for 128)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, fp32 (f*h*w, head_dim//2), tokens in (f, h, w) row-major order.

    Pair i of the head belongs to axis t, h or w by the 3-D split; its angle is position_on_axis * freq with
    freq_k = theta^(-2k/d_axis). Angles are formed in fp64 so large positions keep their precision.
    """
    f, h, w = grid
    angles_per_axis = []
    for size, axis_dim in zip((f, h, w), rope_axis_dims(head_dim), strict=True):
        freqs = theta ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
        angles_per_axis.append(torch.arange(size, dtype=torch.float64)[:, None] * freqs[None, :])
    t_ang, h_ang, w_ang = angles_per_axis
    angles = torch.cat(
        [
            t_ang[:, None, None, :].expand(f, h, w, -1),
            h_ang[None, :, None, :].expand(f, h, w, -1),
            w_ang[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, head_dim // 2)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[..., 2i], x[..., 2i+1]) of x (B, L, H, D) by the per-token angles of cos/sin
    (L, D//2). Computed in fp32, returned in x's dtype."""
    xf = x.float().unflatten(-1, (-1, 2))
    real, imag = xf[..., 0], xf[..., 1]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    rotated = torch.stack((real * c - imag * s, real * s + imag * c), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
