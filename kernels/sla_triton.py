"""SLA (sparse-linear attention) forward in Triton, tuned for Hopper; semantics of kernels.reference.sla_attention.

Three launches per call:
1. `_block_mean_kernel` mean-pools q (per block_q tokens) and k (per block_k tokens) in fp32; the key smoothing
   (k minus its mean over L) is folded in afterwards, since mean(k_block - k_mean) = mean(k_block) - k_mean.
   The score matrix, top-k and a sort of the chosen block ids (for L2 locality) are cheap torch ops.
2. `_linear_kv_kernel` reduces phi(k)^T v and sum_L phi(k) (phi = softmax over the head dim) per head, split over
   L into partial sums that torch adds up: one pass over k and v.
3. `_sla_sparse_kernel`: flash attention of each 128-query block over its chosen key blocks only; its epilogue adds
   the linear branch for the same rows (phi(q) kv / (1e-5 + phi(q).ksum), then proj_l), so o is written once.
"""

from __future__ import annotations

import math

import torch

from kernels.graphs import opaque_to_compile

try:  # Triton is absent on some CPU-only installs; the dispatcher then keeps to the reference.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    HAVE_TRITON = False



if HAVE_TRITON:

    @triton.jit
    def _block_mean_kernel(
        X, OUT, L, n_heads,
        sxb, sxh, sxl, sxd,
        BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // n_heads
        h = bh % n_heads
        offs_l = blk * BLOCK + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, HEAD_DIM)
        valid = offs_l < L
        ptrs = X + b * sxb + h * sxh + offs_l[:, None] * sxl + offs_d[None, :] * sxd
        x = tl.load(ptrs, mask=valid[:, None], other=0.0).to(tl.float32)
        count = tl.minimum(L - blk * BLOCK, BLOCK).to(tl.float32)
        mean = tl.sum(x, axis=0) / count
        n_blocks = tl.num_programs(0)
        tl.store(OUT + (bh * n_blocks + blk) * HEAD_DIM + offs_d, mean)

    @triton.jit
    def _linear_kv_kernel(
        K, V, KV_PART, KSUM_PART, L, n_heads, rows_per_split,
        skb, skh, skl, skd,
        svb, svh, svl, svd,
        BLOCK_L: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        bh = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)
        b = bh // n_heads
        h = bh % n_heads
        offs_d = tl.arange(0, HEAD_DIM)
        kv = tl.zeros((HEAD_DIM, HEAD_DIM), dtype=tl.float32)
        ksum = tl.zeros((HEAD_DIM,), dtype=tl.float32)
        start = split * rows_per_split
        for l0 in range(start, start + rows_per_split, BLOCK_L):
            offs_l = l0 + tl.arange(0, BLOCK_L)
            valid = offs_l < L
            k = tl.load(K + b * skb + h * skh + offs_l[:, None] * skl + offs_d[None, :] * skd,
                        mask=valid[:, None], other=0.0).to(tl.float32)
            v = tl.load(V + b * svb + h * svh + offs_l[:, None] * svl + offs_d[None, :] * svd,
                        mask=valid[:, None], other=0.0).to(tl.float32)
            k = k - tl.max(k, axis=1)[:, None]
            e = tl.exp(k)
            phi = e / tl.sum(e, axis=1)[:, None]
            phi = tl.where(valid[:, None], phi, 0.0)
            kv += tl.dot(tl.trans(phi), v)
            ksum += tl.sum(phi, axis=0)
        part = bh * n_splits + split
        tl.store(KV_PART + part * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_d[None, :], kv)
        tl.store(KSUM_PART + part * HEAD_DIM + offs_d, ksum)

    @triton.jit
    def _sla_sparse_kernel(
        Q, K, V, Out, LUT, KV, KSUM, W, BIAS,
        L, n_heads, n_sel, qk_scale,
        sqb, sqh, sql, sqd,
        skb, skh, skl, skd,
        svb, svh, svl, svd,
        sob, soh, sol, sod,
        slut_bh, slut_q,
        BLOCK_M: tl.constexpr, BLOCK_QB: tl.constexpr, BLOCK_KB: tl.constexpr, BLOCKS_PER_ITER: tl.constexpr,
        HEAD_DIM: tl.constexpr, FUSE_LINEAR: tl.constexpr,
    ):
        # A program takes BLOCK_M query rows (BLOCK_M divides the query block BLOCK_QB) and the key blocks that
        # its query block chose.
        BLOCK_N: tl.constexpr = BLOCK_KB * BLOCKS_PER_ITER
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // n_heads
        h = bh % n_heads
        qb = (pid_m * BLOCK_M) // BLOCK_QB
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        offs_n = tl.arange(0, BLOCK_N)
        row_ok = offs_m < L
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :] * sqd,
                    mask=row_ok[:, None], other=0.0)
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh
        lut_row = LUT + bh * slut_bh + qb * slut_q

        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        for j in range(0, n_sel, BLOCKS_PER_ITER):
            slot = j + offs_n // BLOCK_KB
            blk = tl.load(lut_row + slot, mask=slot < n_sel, other=-1)
            kpos = blk * BLOCK_KB + offs_n % BLOCK_KB
            key_ok = (blk >= 0) & (kpos < L)
            k = tl.load(k_base + kpos[:, None] * skl + offs_d[None, :] * skd, mask=key_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k))
            s = tl.where(key_ok[None, :], s, float("-inf"))
            # Every chunk holds at least one real key (its first slot is a chosen block), so m_new stays finite.
            # m is kept in scaled (log2) units so the scale folds into one FMA per score.
            m_new = tl.maximum(m_i, (tl.max(s, axis=1) * qk_scale).to(tl.float32))
            p = tl.exp2((s * qk_scale).to(tl.float32) - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + kpos[:, None] * svl + offs_d[None, :] * svd, mask=key_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]

        if FUSE_LINEAR:
            qf = q.to(tl.float32)
            qf = qf - tl.max(qf, axis=1)[:, None]
            e = tl.exp(qf)
            phi_q = e / tl.sum(e, axis=1)[:, None]
            kv = tl.load(KV + bh * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_d[None, :])
            ksum = tl.load(KSUM + bh * HEAD_DIM + offs_d)
            lin = tl.dot(phi_q, kv) / (1e-5 + tl.sum(phi_q * ksum[None, :], axis=1))[:, None]
            # proj_l: lin @ W^T + bias, W stored [out, in]; load it transposed as [in, out].
            w_t = tl.load(W + offs_d[None, :] * HEAD_DIM + offs_d[:, None])
            out += tl.dot(lin, w_t) + tl.load(BIAS + offs_d)[None, :]

        tl.store(Out + b * sob + h * soh + offs_m[:, None] * sol + offs_d[None, :] * sod,
                 out.to(Out.dtype.element_ty), mask=row_ok[:, None])


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"SLA needs q, k, v of one shape (B, H, L, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    d = q.shape[-1]
    if d not in (16, 32, 64, 128):
        raise ValueError(f"SLA kernel supports head_dim 16/32/64/128, got {d}")


def block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 (B, H, ceil(L/block), D): mean of each block of `block` tokens (a last partial block: of its tokens)."""
    b, h, length, d = x.shape
    n_blocks = math.ceil(length / block)
    out = torch.empty((b, h, n_blocks, d), device=x.device, dtype=torch.float32)
    _block_mean_kernel[(n_blocks, b * h)](
        x, out, length, h, *x.stride(), BLOCK=block, HEAD_DIM=d, num_warps=4,
    )
    return out


def block_lut(q: torch.Tensor, k: torch.Tensor, topk: float, block_q: int, block_k: int) -> torch.Tensor:
    """int32 (B, H, n_qblocks, keep): the chosen key blocks of every query block, ascending (see reference)."""
    length = q.shape[-2]
    pooled_q = block_means(q, block_q)
    pooled_k = block_means(k, block_k)
    # Mean over L of k from its block means, weighted by block sizes (the last block may be partial).
    n_kb = pooled_k.shape[-2]
    weights = torch.full((n_kb,), float(block_k), device=k.device, dtype=torch.float32)
    weights[-1] = length - (n_kb - 1) * block_k
    k_mean = (pooled_k * weights[:, None]).sum(dim=-2, keepdim=True) / length
    score = pooled_q @ (pooled_k - k_mean).transpose(-1, -2)
    keep = min(n_kb, max(1, int(topk * n_kb)))
    chosen = torch.topk(score, keep, dim=-1, sorted=False).indices
    return torch.sort(chosen, dim=-1).values.to(torch.int32).contiguous()


def linear_kv(k: torch.Tensor, v: torch.Tensor, rows_per_split: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (B*H, D, D) phi(k)^T v and (B*H, D) sum_L phi(k), phi = softmax over the head dim."""
    b, h, length, d = k.shape
    block_l = 64
    rows_per_split = max(block_l, (rows_per_split // block_l) * block_l)
    n_splits = math.ceil(length / rows_per_split)
    kv_part = torch.empty((b * h, n_splits, d, d), device=k.device, dtype=torch.float32)
    ksum_part = torch.empty((b * h, n_splits, d), device=k.device, dtype=torch.float32)
    _linear_kv_kernel[(b * h, n_splits)](
        k, v, kv_part, ksum_part, length, h, rows_per_split, *k.stride(), *v.stride(),
        BLOCK_L=block_l, HEAD_DIM=d, num_warps=8,
    )
    return kv_part.sum(dim=1), ksum_part.sum(dim=1)


@opaque_to_compile
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
    blocks_per_iter: int = 2,
    block_m: int | None = None,
    num_warps: int = 8,
    num_stages: int = 2,
    fuse_linear: bool = True,
) -> torch.Tensor:
    """Drop-in for kernels.reference.sla_attention (same arguments, output (B, H, L, D) in q's dtype)."""
    _check_inputs(q, k, v)
    b, h, length, d = q.shape
    lut = block_lut(q, k, topk, block_q, block_k)
    kv, ksum = linear_kv(k, v)
    w = proj_l_weight.to(device=q.device, dtype=torch.float32).contiguous()
    bias = proj_l_bias.to(device=q.device, dtype=torch.float32).contiguous()
    out = torch.empty_like(q)
    n_sel = lut.shape[-1]
    block_m = min(block_q, block_m or block_q)
    if block_q % block_m:
        raise ValueError(f"SLA kernel: block_m {block_m} must divide block_q {block_q}")
    _sla_sparse_kernel[(triton.cdiv(length, block_m), b * h)](
        q, k, v, out, lut, kv, ksum, w, bias,
        length, h, n_sel, (1.0 / math.sqrt(d)) * 1.4426950408889634,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        lut.stride(1), lut.stride(2),
        BLOCK_M=block_m, BLOCK_QB=block_q, BLOCK_KB=block_k, BLOCKS_PER_ITER=blocks_per_iter, HEAD_DIM=d,
        FUSE_LINEAR=fuse_linear, num_warps=num_warps, num_stages=num_stages,
    )
    if not fuse_linear:
        qf = torch.softmax(q.float(), dim=-1)
        lin = (qf @ kv.view(b, h, d, d)) / (1e-5 + (qf * ksum.view(b, h, 1, d)).sum(-1, keepdim=True))
        out = (out.float() + torch.nn.functional.linear(lin, w, bias)).to(q.dtype)
    return out
