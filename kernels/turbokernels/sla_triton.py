"""SLA (sparse-linear attention) forward in Triton, tuned for Hopper; semantics of turbokernels.reference.sla_attention.

Three launches per call:
1. `_block_mean_kernel` mean-pools q (per block_q tokens) and k (per block_k tokens) in fp32; the key smoothing
   (k minus its mean over L) is folded in afterwards, since mean(k_block - k_mean) = mean(k_block) - k_mean.
   The score matrix, top-k and a sort of the chosen block ids (for L2 locality) are cheap torch ops.
2. `_linear_kv_kernel` reduces phi(k)^T v and sum_L phi(k) (phi = softmax over the head dim) per head, split over
   L into partial sums that torch adds up: one pass over k and v.
3. `_sla_sparse_kernel`: flash attention of each 128-query block over its chosen key blocks only; its epilogue adds
   the linear branch for the same rows (phi(q) kv / (1e-5 + phi(q).ksum), then proj_l), so o is written once.

Variants, chosen by keyword of `sla_attention` (defaults = the kernels above, the best measured so far):
- `sparse_impl="tma"`: `_sla_sparse_tma_kernel`, the same flash loop with q, k, v loaded through host-side TMA
  tensor descriptors (Hopper+): the gathered key blocks are TMA copies at a dynamic row, so the loads no longer
  cost address arithmetic and registers. Two key blocks per iteration are two loads and two score chains merged in
  one online-softmax update. Only when the layout maps onto a 2-D descriptor (see `_tma_layout`); else the
  pointer kernel runs.
- `sparse_impl="gluon"` (default): turbokernels.sla_gluon, the same work split in Gluon, warp-specialised with the
  score and P.V products software-pipelined (FlashAttention-3's scheme); on sm_90 only, else "tma" runs. Its linear
  branch runs in the epilogue as one more wgmma (kv and proj_l folded into one bf16 matrix per head).
- `pv_fp8=True` (with "gluon"): P.V on fp8 tensor cores (turbokernels.sla_gluon's PV_FP8): the side pass also takes
  v's per-channel absmax and `_transpose_v_fp8_kernel` writes e4m3 V^T. Approximate; held to cosine >= 0.999.
- `side_impl="fused"`: `_linear_kv_pool_kernel` pools k into block means in the same pass that reduces
  phi(k)^T v (k is read once for both), with phi cast to v's dtype so the reduction runs on bf16 tensor cores
  with fp32 accumulation (the default kernel feeds fp32 operands to tl.dot).
"""

from __future__ import annotations

import logging
import math

import torch

from turbokernels.reference import sla_input_problem
from turbokernels.torch_compile import opaque_to_compile

try:  # Triton is absent on some CPU-only installs; the dispatcher then keeps to the reference.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    HAVE_TRITON = False

try:  # host-side TMA descriptors (triton >= 3.4); the TMA variant falls back to pointers without them.
    from triton.tools.tensor_descriptor import TensorDescriptor

    HAVE_TENSOR_DESCRIPTOR = True
except ImportError:  # pragma: no cover - older triton
    HAVE_TENSOR_DESCRIPTOR = False


if HAVE_TRITON:

    @triton.jit
    def _load_head_block(X, L, n_heads, sxb, sxh, sxl, sxd, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
        # The row block of the programs grid (blocks of BLOCK rows, B*H heads) of a (B, H, L, D) view, in fp32
        # (rows past L read 0), with its row offsets and validity: the prologue the per-block kernels share.
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // n_heads
        h = bh % n_heads
        offs_l = blk * BLOCK + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, HEAD_DIM)
        valid = offs_l < L
        x = tl.load(X + b * sxb + h * sxh + offs_l[:, None] * sxl + offs_d[None, :] * sxd, mask=valid[:, None],
                    other=0.0).to(tl.float32)
        return x, blk, bh, offs_l, offs_d, valid

    @triton.jit
    def _block_mean_kernel(
        X, OUT, L, n_heads,
        sxb, sxh, sxl, sxd,
        BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        x, blk, bh, _, offs_d, _ = _load_head_block(X, L, n_heads, sxb, sxh, sxl, sxd, BLOCK, HEAD_DIM)
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
    def _linear_branch(qf, KV, KSUM, W, BIAS, bh, HEAD_DIM: tl.constexpr):
        # SLA's linear branch for these query rows (fp32 q): phi(q) kv / (1e-5 + phi(q).ksum), then proj_l.
        offs_d = tl.arange(0, HEAD_DIM)
        qf = qf - tl.max(qf, axis=1)[:, None]
        e = tl.exp(qf)
        phi_q = e / tl.sum(e, axis=1)[:, None]
        kv = tl.load(KV + bh * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_d[None, :])
        ksum = tl.load(KSUM + bh * HEAD_DIM + offs_d)
        lin = tl.dot(phi_q, kv) / (1e-5 + tl.sum(phi_q * ksum[None, :], axis=1))[:, None]
        # proj_l: lin @ W^T + bias, W stored [out, in]; load it transposed as [in, out].
        w_t = tl.load(W + offs_d[None, :] * HEAD_DIM + offs_d[:, None])
        return tl.dot(lin, w_t) + tl.load(BIAS + offs_d)[None, :]

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
            out += _linear_branch(q.to(tl.float32), KV, KSUM, W, BIAS, bh, HEAD_DIM)

        tl.store(Out + b * sob + h * soh + offs_m[:, None] * sol + offs_d[None, :] * sod,
                 out.to(Out.dtype.element_ty), mask=row_ok[:, None])

    @triton.jit
    def _attend_keys(
        q, k_desc, v_desc, blk0, blk1, use1, k_row0, k_col0, v_row0, v_col0, L, qk_scale, m_i, l_i, acc,
        BLOCK_KB: tl.constexpr, TWO: tl.constexpr, MASK: tl.constexpr,
    ):
        # One online-softmax update over key block blk0 (and blk1 when TWO), loaded by TMA at a dynamic row.
        # qk_scale (log2(e)/sqrt(d)) turns the raw products into log2-unit logits.
        # Only the last step of a program needs MASK: keys past L (the last key block may be partial; the
        # descriptor then reads zeros or a neighbouring head's rows, never out of the tensor) and, with TWO, the
        # second block of an odd tail (use1 false) score -inf. The lut is ascending, so the partial last block
        # can only be the final slot.
        # Both score products are issued before either is reduced and both P.V products after both numerators
        # exist, leaving the compiler free to overlap them (triton 3.9's sm_90 IR still waits on each product
        # before the next; only the last P.V stays in flight into the next iteration).
        offs = tl.arange(0, BLOCK_KB)
        k0 = k_desc.load([k_row0 + blk0 * BLOCK_KB, k_col0])
        s0 = tl.dot(q, tl.trans(k0))
        if TWO:
            k1 = k_desc.load([k_row0 + blk1 * BLOCK_KB, k_col0])
            s1 = tl.dot(q, tl.trans(k1))
        if MASK:
            s0 = tl.where((blk0 * BLOCK_KB + offs < L)[None, :], s0, float("-inf"))
        row_max = tl.max(s0, axis=1) * qk_scale
        if TWO:
            if MASK:
                s1 = tl.where(((blk1 * BLOCK_KB + offs < L) & use1)[None, :], s1, float("-inf"))
            row_max = tl.maximum(row_max, tl.max(s1, axis=1) * qk_scale)
        # blk0 always holds a real key, so m_new is finite; m is in scaled log2 units (one FMA per score).
        m_new = tl.maximum(m_i, row_max)
        alpha = tl.exp2(m_i - m_new)
        p0 = tl.exp2(s0 * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p0, axis=1)
        if TWO:
            p1 = tl.exp2(s1 * qk_scale - m_new[:, None])
            l_i += tl.sum(p1, axis=1)
        acc = acc * alpha[:, None]
        v0 = v_desc.load([v_row0 + blk0 * BLOCK_KB, v_col0])
        acc = tl.dot(p0.to(v0.dtype), v0, acc)
        if TWO:
            v1 = v_desc.load([v_row0 + blk1 * BLOCK_KB, v_col0])
            acc = tl.dot(p1.to(v1.dtype), v1, acc)
        return m_new, l_i, acc

    @triton.jit
    def _main_step(
        it, q, k_desc, v_desc, lut_row, qk_scale, k_row0, k_col0, v_row0, v_col0, L, m_i, l_i, acc,
        BLOCK_KB: tl.constexpr, TWO: tl.constexpr,
    ):
        # One unmasked iteration of the TMA kernel's key loop: slots it*STEP (and +1), never the last slot.
        STEP: tl.constexpr = 2 if TWO else 1
        blk0 = tl.load(lut_row + it * STEP)
        blk1 = blk0
        if TWO:
            blk1 = tl.load(lut_row + it * STEP + 1)
        return _attend_keys(
            q, k_desc, v_desc, blk0, blk1, True, k_row0, k_col0, v_row0, v_col0, L, qk_scale,
            m_i, l_i, acc, BLOCK_KB, TWO, False,
        )

    @triton.jit
    def _sla_sparse_tma_kernel(
        q_desc, k_desc, v_desc, Out, LUT, KV, KSUM, W, BIAS,
        L, n_heads, n_sel, qk_scale,
        q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch,
        sob, soh, sol, sod,
        slut_bh, slut_q,
        BLOCK_M: tl.constexpr, BLOCK_QB: tl.constexpr, BLOCK_KB: tl.constexpr, TWO: tl.constexpr,
        HEAD_DIM: tl.constexpr, FUSE_LINEAR: tl.constexpr, NUM_STAGES: tl.constexpr,
    ):
        # Same work split as _sla_sparse_kernel. Each operand is a 2-D descriptor (see _tma_layout): head (b, h)
        # starts at row b*rb + h*rh, column h*ch.
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // n_heads
        h = bh % n_heads
        qb = (pid_m * BLOCK_M) // BLOCK_QB
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        # Rows past L hold zeros or the next head's queries: computed, never stored.
        q = q_desc.load([b * q_rb + h * q_rh + pid_m * BLOCK_M, h * q_ch])
        k_row0 = b * k_rb + h * k_rh
        k_col0 = h * k_ch
        v_row0 = b * v_rb + h * v_rh
        v_col0 = h * v_ch
        lut_row = LUT + bh * slut_bh + qb * slut_q

        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        STEP: tl.constexpr = 2 if TWO else 1
        # All but the last 1..STEP slots need no mask; the tail step handles those.
        n_main = (n_sel - 1) // STEP
        for it in tl.range(0, n_main, num_stages=NUM_STAGES):
            m_i, l_i, acc = _main_step(
                it, q, k_desc, v_desc, lut_row, qk_scale, k_row0, k_col0, v_row0, v_col0, L,
                m_i, l_i, acc, BLOCK_KB, TWO,
            )
        j = n_main * STEP
        blk0 = tl.load(lut_row + j)
        # An odd tail re-reads slot j as its (masked-out) second block instead of branching.
        blk1 = tl.load(lut_row + tl.minimum(j + 1, n_sel - 1))
        m_i, l_i, acc = _attend_keys(
            q, k_desc, v_desc, blk0, blk1, j + 1 < n_sel, k_row0, k_col0, v_row0, v_col0, L, qk_scale,
            m_i, l_i, acc, BLOCK_KB, TWO, True,
        )
        out = acc / l_i[:, None]

        if FUSE_LINEAR:
            out += _linear_branch(q.to(tl.float32), KV, KSUM, W, BIAS, bh, HEAD_DIM)

        row_ok = offs_m < L
        tl.store(Out + b * sob + h * soh + offs_m[:, None] * sol + offs_d[None, :] * sod,
                 out.to(Out.dtype.element_ty), mask=row_ok[:, None])

    @triton.jit
    def _linear_kv_pool_kernel(
        K, V, KV_PART, KSUM_PART, POOL, VMAX_PART, L, n_heads, rows_per_split, n_kblocks,
        skb, skh, skl, skd,
        svb, svh, svl, svd,
        BLOCK_L: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_STAGES: tl.constexpr, V_ABSMAX: tl.constexpr,
    ):
        # _linear_kv_kernel plus the block means of k: BLOCK_L is the key block size and rows_per_split a multiple
        # of it, so every iteration is exactly one key block and k is read once for both outputs. V_ABSMAX: also
        # the per-channel absmax of v (the fp8 P.V path's scales), as v passes by anyway.
        bh = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)
        b = bh // n_heads
        h = bh % n_heads
        offs_d = tl.arange(0, HEAD_DIM)
        kv = tl.zeros((HEAD_DIM, HEAD_DIM), dtype=tl.float32)
        ksum = tl.zeros((HEAD_DIM,), dtype=tl.float32)
        vmax = tl.zeros((HEAD_DIM,), dtype=tl.float32)
        start = split * rows_per_split
        stop = tl.minimum(start + rows_per_split, L)
        for l0 in tl.range(start, stop, BLOCK_L, num_stages=NUM_STAGES):
            offs_l = l0 + tl.arange(0, BLOCK_L)
            valid = offs_l < L
            k = tl.load(K + b * skb + h * skh + offs_l[:, None] * skl + offs_d[None, :] * skd,
                        mask=valid[:, None], other=0.0).to(tl.float32)
            v = tl.load(V + b * svb + h * svh + offs_l[:, None] * svl + offs_d[None, :] * svd,
                        mask=valid[:, None], other=0.0)
            count = tl.minimum(L - l0, BLOCK_L).to(tl.float32)
            tl.store(POOL + (bh * n_kblocks + l0 // BLOCK_L) * HEAD_DIM + offs_d, tl.sum(k, axis=0) / count)
            k = k - tl.max(k, axis=1)[:, None]
            e = tl.exp(k)
            phi = e / tl.sum(e, axis=1)[:, None]
            phi = tl.where(valid[:, None], phi, 0.0)
            # phi in v's dtype: bf16 x bf16 tensor-core products with fp32 accumulation (phi in [0, 1]).
            kv = tl.dot(tl.trans(phi.to(v.dtype)), v, kv)
            ksum += tl.sum(phi, axis=0)
            if V_ABSMAX:
                vmax = tl.maximum(vmax, tl.max(tl.abs(v.to(tl.float32)), axis=0))
        part = bh * n_splits + split
        if V_ABSMAX:
            tl.store(VMAX_PART + part * HEAD_DIM + offs_d, vmax)
        tl.store(KV_PART + part * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_d[None, :], kv)
        tl.store(KSUM_PART + part * HEAD_DIM + offs_d, ksum)


    @triton.jit
    def _transpose_v_fp8_kernel(
        V, SCALE, OUT, L, n_heads, L_PAD,
        svb, svh, svl, svd,
        BLOCK_L: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        # One key block of one head: v / scale (per channel) as e4m3, stored transposed into rows (b, h, d) of
        # OUT (B*H*D, L_PAD); keys past L are written as zeros, so every TMA box of the fp8 kernel is defined.
        v, _, bh, offs_l, offs_d, _ = _load_head_block(V, L, n_heads, svb, svh, svl, svd, BLOCK_L, HEAD_DIM)
        inv = 1.0 / tl.load(SCALE + bh * HEAD_DIM + offs_d)
        vq = (v * inv[None, :]).to(OUT.dtype.element_ty)
        tl.store(OUT + (bh * HEAD_DIM + offs_d[None, :]).to(tl.int64) * L_PAD + offs_l[:, None], vq,
                 mask=(offs_l < L_PAD)[:, None])


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    problem = sla_input_problem(q, k, v, kernel=True)
    if problem is not None:
        raise ValueError(f"SLA kernel: {problem}")


def block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 (B, H, ceil(L/block), D): mean of each block of `block` tokens (a last partial block: of its tokens)."""
    b, h, length, d = x.shape
    n_blocks = math.ceil(length / block)
    out = torch.empty((b, h, n_blocks, d), device=x.device, dtype=torch.float32)
    _block_mean_kernel[(n_blocks, b * h)](
        x, out, length, h, *x.stride(), BLOCK=block, HEAD_DIM=d, num_warps=4,
    )
    return out


def _k_mean(pooled_k: torch.Tensor, length: int, block_k: int) -> torch.Tensor:
    """fp32 (B, H, 1, D) mean over L of k from its block means, weighted by block sizes (the last may be partial)."""
    n_kb = pooled_k.shape[-2]
    weights = torch.full((n_kb,), float(block_k), device=pooled_k.device, dtype=torch.float32)
    weights[-1] = length - (n_kb - 1) * block_k
    return (pooled_k * weights[:, None]).sum(dim=-2, keepdim=True) / length


def _lut_from_pooled(pooled_q: torch.Tensor, pooled_k: torch.Tensor, length: int, topk: float,
                     block_k: int) -> torch.Tensor:
    n_kb = pooled_k.shape[-2]
    score = pooled_q @ (pooled_k - _k_mean(pooled_k, length, block_k)).transpose(-1, -2)
    keep = min(n_kb, max(1, int(topk * n_kb)))
    chosen = torch.topk(score, keep, dim=-1, sorted=False).indices
    # Ascending: neighbouring programs walk keys in the same order (L2), and the TMA kernel relies on it (only
    # the last slot can hold the partial last key block).
    return torch.sort(chosen, dim=-1).values.to(torch.int32).contiguous()


def block_lut(q: torch.Tensor, k: torch.Tensor, topk: float, block_q: int, block_k: int) -> torch.Tensor:
    """int32 (B, H, n_qblocks, keep): the chosen key blocks of every query block, ascending (see reference)."""
    return _lut_from_pooled(block_means(q, block_q), block_means(k, block_k), q.shape[-2], topk, block_k)


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


def linear_kv_pool(
    k: torch.Tensor, v: torch.Tensor, block_k: int, rows_per_split: int = 2048, num_warps: int = 4,
    num_stages: int = 3, v_absmax: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`linear_kv` (phi(k) rounded to v's dtype before the product) and `block_means(k, block_k)` in one pass;
    with `v_absmax` also fp32 (B*H, D) max over L of |v| (else None)."""
    b, h, length, d = k.shape
    rows_per_split = max(block_k, (rows_per_split // block_k) * block_k)
    n_splits = math.ceil(length / rows_per_split)
    n_kb = math.ceil(length / block_k)
    kv_part = torch.empty((b * h, n_splits, d, d), device=k.device, dtype=torch.float32)
    ksum_part = torch.empty((b * h, n_splits, d), device=k.device, dtype=torch.float32)
    pooled = torch.empty((b, h, n_kb, d), device=k.device, dtype=torch.float32)
    vmax_part = torch.empty((b * h, n_splits, d), device=k.device, dtype=torch.float32) if v_absmax else ksum_part
    _linear_kv_pool_kernel[(b * h, n_splits)](
        k, v, kv_part, ksum_part, pooled, vmax_part, length, h, rows_per_split, n_kb, *k.stride(), *v.stride(),
        BLOCK_L=block_k, HEAD_DIM=d, NUM_STAGES=num_stages, V_ABSMAX=v_absmax, num_warps=num_warps,
    )
    return kv_part.sum(dim=1), ksum_part.sum(dim=1), pooled, vmax_part.amax(dim=1) if v_absmax else None


def v_channel_absmax(v: torch.Tensor) -> torch.Tensor:
    """fp32 (B*H, D) max over L of |v| for (B, H, L, D) v: the fp8 P.V path's per-channel scales, where the fused
    side pass (`linear_kv_pool(..., v_absmax=True)`) does not provide them."""
    return v.abs().amax(dim=-2).float().reshape(-1, v.shape[-1])


def transpose_v_fp8(
    v: torch.Tensor, v_absmax: torch.Tensor, block_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """v (B, H, L, D) as e4m3 V^T for the fp8 P.V path: ((B*H*D, L_pad) fp8 with L_pad = L rounded up to
    block_k, keys past L zero; fp32 (B*H, D) per-channel scales absmax / 448, so v ~= V^T.T * scale)."""
    b, h, length, d = v.shape
    n_kb = math.ceil(length / block_k)
    scale = (v_absmax.float() / 448.0).clamp_min(1e-12).contiguous()
    out = torch.empty((b * h * d, n_kb * block_k), device=v.device, dtype=torch.float8_e4m3fn)
    _transpose_v_fp8_kernel[(n_kb, b * h)](
        v, scale, out, length, h, n_kb * block_k, *v.stride(), BLOCK_L=block_k, HEAD_DIM=d, num_warps=4,
    )
    return out, scale


def _tma_layout(x: torch.Tensor) -> tuple[int, int, int, int, int, int] | None:
    """How a (B, H, L, D) view maps onto one 2-D TMA descriptor, or None (then the pointer kernel runs).

    Returns (rows, cols, row_stride, rb, rh, ch): head (b, h) is the block at row b*rb + h*rh, column h*ch.
    Two layouts qualify: heads side by side in a row (the model's (B, L, H, D) storage seen as (B, H, L, D),
    possibly a slice of a wider fused-qkv row) and heads one after another ((B, H, L, D) contiguous). TMA needs
    a unit last stride and 16-byte aligned base and row stride.
    """
    b, h, length, d = x.shape
    sb, sh, sl, sd = x.stride()
    if sd != 1 or (sl * x.element_size()) % 16 or x.data_ptr() % 16:
        return None
    if (h == 1 or sh == d) and (b == 1 or sb == length * sl) and sl >= h * d:
        return b * length, h * d, sl, length, 0, d
    if (h == 1 or sh == length * sl) and (b == 1 or sb == h * length * sl) and sl >= d:
        return b * h * length, d, sl, h * length, length, 0
    return None


def tma_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `sparse_impl="tma"` takes the TMA kernel for these tensors (else it falls back to pointers):
    the tensor-copy engine exists from Hopper (sm_90) on; CPU tensors are the interpreter's (tests)."""
    if q.is_cuda and torch.cuda.get_device_capability(q.device) < (9, 0):
        return False
    return HAVE_TENSOR_DESCRIPTOR and all(_tma_layout(x) is not None for x in (q, k, v))


def _descriptor(x: torch.Tensor, block_rows: int) -> tuple[TensorDescriptor, tuple[int, int, int]]:
    rows, cols, row_stride, rb, rh, ch = _tma_layout(x)  # type: ignore[misc]  # checked by tma_supported
    desc = TensorDescriptor(x, [rows, cols], [row_stride, 1], [block_rows, x.shape[-1]])
    return desc, (rb, rh, ch)


def _side_inputs_and_vmax(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: float, block_q: int, block_k: int, side_impl: str,
    v_absmax: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(lut, kv, ksum, per-channel absmax of v if `v_absmax` else None)."""
    vmax = None
    if side_impl == "fused":
        kv, ksum, pooled_k, vmax = linear_kv_pool(k, v, block_k, v_absmax=v_absmax)
    elif side_impl == "separate":
        kv, ksum = linear_kv(k, v)
        pooled_k = block_means(k, block_k)
        if v_absmax:
            vmax = v_channel_absmax(v)
    else:
        raise ValueError(f"side_impl must be 'separate' or 'fused', got {side_impl!r}")
    lut = _lut_from_pooled(block_means(q, block_q), pooled_k, q.shape[-2], topk, block_k)
    return lut, kv, ksum, vmax


def side_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: float, block_q: int, block_k: int,
    side_impl: str = "fused",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the sparse kernel reads besides q, k, v: (block lut, kv, ksum); see `sla_attention` for side_impl."""
    return _side_inputs_and_vmax(q, k, v, topk, block_q, block_k, side_impl)[:3]


logger = logging.getLogger(__name__)

# Why the Gluon kernel was given up in this process (it failed to build), or None while it is in use.
_gluon_disabled: str | None = None


def gluon_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int) -> bool:
    """Whether `sparse_impl="gluon"` takes the Gluon kernel (else the TMA Triton kernel runs): wgmma exists on
    sm_90 only, Gluon has no interpreter, and it is built and GPU-tested for the model's shapes only: bf16, 128
    query rows per block, key blocks of 64, head dim 128 (its stages fill the shared memory)."""
    from turbokernels.sla_gluon import HAVE_GLUON

    return (
        HAVE_GLUON and _gluon_disabled is None and q.is_cuda and q.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(q.device) == (9, 0)
        and block_q == 128 and block_k == 64 and q.shape[-1] == 128 and tma_supported(q, k, v)
    )


def _check_sparse_options(sparse_impl: str, blocks_per_iter: int) -> None:
    if sparse_impl not in ("pointer", "tma", "gluon"):
        raise ValueError(f"sparse_impl must be 'pointer', 'tma' or 'gluon', got {sparse_impl!r}")
    if blocks_per_iter not in (1, 2) and sparse_impl == "tma":
        raise ValueError(f"the TMA kernel takes 1 or 2 key blocks per iteration, got {blocks_per_iter}")


def _gluon_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lut: torch.Tensor, out: torch.Tensor, kv: torch.Tensor,
    ksum: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, block_q: int, block_k: int, qk_scale: float,
    fuse_linear: bool, v_absmax: torch.Tensor | None,
) -> None:
    from turbokernels import sla_gluon

    b, h, length, d = q.shape
    maps = [_tma_layout(x) for x in (q, k, v)]
    q_desc = sla_gluon.descriptor(q, block_q, maps[0])
    k_desc = sla_gluon.descriptor(k, block_k, maps[1])
    if v_absmax is not None:  # fp8 P.V: V^T in e4m3; head (b, h) is rows (b*h + h')*d.. of it
        vt, v_scale = transpose_v_fp8(v, v_absmax, block_k)
        v_desc = sla_gluon.transposed_v_descriptor(vt, d, block_k)
        v_map = (h * d, d, 0)
    else:
        v_desc = sla_gluon.descriptor(v, block_k, maps[2])
        v_map, v_scale = maps[2][3:], ksum  # ksum: a placeholder the bf16 kernel never reads
    # The linear branch's two products folded into one matrix per head: phi(q) kv W^T = phi(q) M (fp32 fold,
    # bf16 operand as upstream runs the branch); rows b*h*d.. of a 2-D (B*H*D, D) tensor.
    m = (kv.view(b * h, d, d) @ w.t()).to(q.dtype).reshape(b * h * d, d)
    m_desc = sla_gluon.descriptor(m, d, (b * h * d, d, d, 0, 0, 0))
    sla_gluon._sla_sparse_gluon_kernel[(triton.cdiv(length, block_q), b * h)](
        q_desc, k_desc, v_desc, m_desc, out, lut, ksum, bias, v_scale, length, h,
        lut.shape[-1], qk_scale, *maps[0][3:], *maps[1][3:], *v_map, *out.stride(), lut.stride(1), lut.stride(2),
        BLOCK_M=block_q, BLOCK_KB=block_k, HEAD_DIM=d, K_STAGES=3, V_STAGES=2, CONSUMER_REGS=240,
        FUSE_LINEAR=fuse_linear, PV_FP8=v_absmax is not None, num_warps=4,
    )


def _try_gluon(*args: object) -> bool:
    """Run the Gluon kernel; if it does not build here (Gluon is experimental and its API moves between Triton
    releases), say so once and leave it off for the process, so jobs go on with the TMA Triton kernel."""
    global _gluon_disabled
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    try:
        _gluon_sparse(*args)  # type: ignore[arg-type]
    except (CompilationError, OutOfResources) as exc:
        _gluon_disabled = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        logger.warning("SLA: the Gluon kernel does not build with this Triton (%s); using the TMA kernel instead",
                       _gluon_disabled)
        return False
    return True


def sparse_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lut: torch.Tensor,
    kv: torch.Tensor,
    ksum: torch.Tensor,
    proj_l_weight: torch.Tensor,
    proj_l_bias: torch.Tensor,
    block_q: int,
    block_k: int,
    *,
    blocks_per_iter: int = 2,
    block_m: int | None = None,
    num_warps: int = 8,
    num_stages: int = 2,
    fuse_linear: bool = True,
    sparse_impl: str = "gluon",
    pv_fp8: bool = False,
    v_absmax: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sparse kernel (plus the linear branch) given `side_inputs`; split out so benchmarks can time it alone.

    pv_fp8 (Gluon kernel only): v_absmax is fp32 (B*H, D) max over L of |v| (computed here when None)."""
    _check_sparse_options(sparse_impl, blocks_per_iter)
    b, h, length, d = q.shape
    w = proj_l_weight.to(device=q.device, dtype=torch.float32).contiguous()
    bias = proj_l_bias.to(device=q.device, dtype=torch.float32).contiguous()
    out = torch.empty_like(q)
    n_sel = lut.shape[-1]
    block_m = min(block_q, block_m or block_q)
    if block_q % block_m:
        raise ValueError(f"SLA kernel: block_m {block_m} must divide block_q {block_q}")
    qk_scale = (1.0 / math.sqrt(d)) * 1.4426950408889634  # log2(e) / sqrt(d): the kernels use exp2
    grid = (triton.cdiv(length, block_m), b * h)
    use_gluon = sparse_impl == "gluon" and gluon_supported(q, k, v, block_q, block_k)
    if use_gluon and pv_fp8 and v_absmax is None:
        v_absmax = v_channel_absmax(v)
    gluon_ran = use_gluon and _try_gluon(
        q, k, v, lut, out, kv, ksum, w, bias, block_q, block_k, qk_scale, fuse_linear, v_absmax if pv_fp8 else None,
    )
    if gluon_ran:
        pass  # the Gluon kernel wrote out (with the linear branch when fuse_linear)
    elif sparse_impl in ("tma", "gluon") and tma_supported(q, k, v):
        q_desc, q_map = _descriptor(q, block_m)
        k_desc, k_map = _descriptor(k, block_k)
        v_desc, v_map = _descriptor(v, block_k)
        _sla_sparse_tma_kernel[grid](
            q_desc, k_desc, v_desc, out, lut, kv, ksum, w, bias,
            length, h, n_sel, qk_scale, *q_map, *k_map, *v_map,
            *out.stride(), lut.stride(1), lut.stride(2),
            BLOCK_M=block_m, BLOCK_QB=block_q, BLOCK_KB=block_k, TWO=blocks_per_iter == 2, HEAD_DIM=d,
            FUSE_LINEAR=fuse_linear, NUM_STAGES=num_stages,
            num_warps=num_warps, num_stages=num_stages,
        )
    else:
        _sla_sparse_kernel[grid](
            q, k, v, out, lut, kv, ksum, w, bias,
            length, h, n_sel, qk_scale,
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
    sparse_impl: str = "gluon",
    side_impl: str = "fused",
    pv_fp8: bool = False,
) -> torch.Tensor:
    """Drop-in for turbokernels.reference.sla_attention (same arguments, output (B, H, L, D) in q's dtype).

    Defaults are the fastest exact choice measured on an H100 (bench/README.md, the SLA kernel table).
    sparse_impl: "gluon" (default: turbokernels.sla_gluon on sm_90, else "tma"), "tma" (falls back to "pointer" where
    `tma_supported` is false) or "pointer";
    side_impl: "fused" (default: k pooled inside the kv pass) or "separate" (pool q, pool k, kv reduction);
    pv_fp8: Gluon kernel only (elsewhere P.V stays bf16), P.V in e4m3 with per-channel V scales. Approximate: the
    sweep and GPU tests hold it to cosine >= 0.999 against the reference.
    """
    _check_inputs(q, k, v)
    _check_sparse_options(sparse_impl, blocks_per_iter)  # before the side kernels run
    # The fp8 P.V path's V scales come out of the side pass, which reads v anyway.
    fp8_pv = pv_fp8 and sparse_impl == "gluon" and gluon_supported(q, k, v, block_q, block_k)
    lut, kv, ksum, vmax = _side_inputs_and_vmax(q, k, v, topk, block_q, block_k, side_impl, fp8_pv)
    return sparse_forward(
        q, k, v, lut, kv, ksum, proj_l_weight, proj_l_bias, block_q, block_k, blocks_per_iter=blocks_per_iter,
        block_m=block_m, num_warps=num_warps, num_stages=num_stages, fuse_linear=fuse_linear,
        sparse_impl=sparse_impl, pv_fp8=fp8_pv, v_absmax=vmax,
    )
