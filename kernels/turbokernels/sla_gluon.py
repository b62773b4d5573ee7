"""SLA's sparse branch for Hopper in Gluon (Triton's lower-level language): explicit wgmma waits, TMA stages and
warp specialisation, FlashAttention-3's scheme on gathered key blocks.

Why not plain Triton: Triton 3.6 waits on every Q.K^T product before it starts the softmax, and the two warpgroups
of a program move in lockstep, so the tensor cores sit idle while the CUDA cores compute exponentials (the TMA
Triton kernel in turbokernels.sla_triton reaches ~370 TFLOP/s at 720p; this one ~580, bench/README.md).

Work split (same as turbokernels.sla_triton's kernels): a program takes one query block (BLOCK_M = block_q = 128 rows)
of one head; its chosen key blocks (block_k = 64 keys each) are taken two at a time, so each score tile is 64 x 128
per warpgroup and each P.V product has K = 128. Partitions:
- one producer warp issues every TMA copy: q, the linear branch's matrix, then K pairs (three stages) and V pairs
  (two stages) at dynamic rows of the 2-D views that `sla_triton._tma_layout` describes. Iteration t's K pair t and
  V pair t-1 arrive on one "ready" barrier and are released together on one "empty" barrier (two arrivals, one per
  consumer), as Triton puts a warpgroup-wide bar.sync before every mbarrier wait and arrive;
- two consumer warpgroups, 64 query rows each, software-pipeline their loop: the scores of pair j are issued, then
  P_{j-1}.V_{j-1}; the softmax of pair j runs while that product is on the tensor cores. No CTA-wide barrier, so
  the warpgroups drift apart and one's softmax also overlaps the other's products.
The linear branch is fused into the epilogue (FUSE_LINEAR): with M = kv proj_l^T folded per head on the host (bf16,
as upstream runs the branch), it is one more [64 x D] x [D x D] wgmma per warpgroup. Shared memory: q 32 KB + K
96 KB + V 64 KB + M 32 KB of the 227 KB a CTA may hold.

PV_FP8 (opt-in, approximate; SageAttention's and TurboDiffusion's SageSLA choice for P.V): V comes as e4m3 V^T with
one scale per channel (sla_triton.transpose_v_fp8), P as e4m3 times 2^8, and P.V runs on fp8 tensor cores with V
staged [D, keys] (fp8 wgmma reads B K-major only) and P staged in shared memory (16 KB for two buffers per
warpgroup, in V's freed half). Measured on the H100 it gains only a few percent at 720p (bench/README.md): the
shared-memory P costs what the halved product saves.
"""

from __future__ import annotations

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # Triton 3.6 (the device image) names the TMA load async_copy_global_to_shared; later ones async_load.
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    # Likewise the barrier among a partition's threads: thread_barrier in 3.6, barrier in later releases.
    _barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    HAVE_GLUON = True
except ImportError:  # pragma: no cover - triton without Gluon's Hopper API
    HAVE_GLUON = False


if HAVE_GLUON:

    @gluon.jit
    def _issue_pair(desc, smem, bar, lut_row, pair, n_sel, row0, col0, BLOCK_KB: gl.constexpr,
                    TRANSPOSED: gl.constexpr):
        # Key blocks 2*pair and 2*pair+1 of the lut into the two halves of one staged tile (an odd tail repeats the
        # last block; its scores are masked). Rows of K or bf16 V; with TRANSPOSED, column ranges of rows
        # (b, h, 0..D) of the fp8 V^T, landing in the two key halves of a [D, 2 * BLOCK_KB] tile (K-major, as fp8
        # wgmma wants its B operand).
        blk0 = gl.load(lut_row + gl.minimum(2 * pair, n_sel - 1))
        blk1 = gl.load(lut_row + gl.minimum(2 * pair + 1, n_sel - 1))
        if TRANSPOSED:
            _tma_load(desc, [row0, blk0 * BLOCK_KB], bar, smem.slice(0, BLOCK_KB, dim=1))
            _tma_load(desc, [row0, blk1 * BLOCK_KB], bar, smem.slice(BLOCK_KB, BLOCK_KB, dim=1))
        else:
            _tma_load(desc, [row0 + blk0 * BLOCK_KB, col0], bar, smem.slice(0, BLOCK_KB))
            _tma_load(desc, [row0 + blk1 * BLOCK_KB, col0], bar, smem.slice(BLOCK_KB, BLOCK_KB))

    @gluon.jit
    def _producer(q_desc, k_desc, v_desc, m_desc, q_smem, k_smem, v_smem, m_smem, q_bar, m_bar, ready, empty,
                  lut_row, n_sel, n_pairs, q_row, q_col, k_row0, k_col0, v_row0, v_col0, m_row,
                  BLOCK_KB: gl.constexpr, K_STAGES: gl.constexpr, V_STAGES: gl.constexpr, FUSE_LINEAR: gl.constexpr,
                  PV_FP8: gl.constexpr):
        # One warp issues every TMA copy: q (and the linear branch's matrix) once, then per iteration t what the
        # consumers' iteration t reads, on one barrier: K pair t (three stages) and V pair t-1 (two stages).
        # One ready and one empty barrier per iteration instead of two each: every wait and arrive costs the
        # consumer warpgroup a bar.sync.
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [q_row, q_col], q_bar, q_smem)
        if FUSE_LINEAR:
            mbarrier.expect(m_bar, m_desc.block_type.nbytes)
            _tma_load(m_desc, [m_row, 0], m_bar, m_smem)
        K_BYTES: gl.constexpr = 2 * k_desc.block_type.nbytes
        V_BYTES: gl.constexpr = 2 * v_desc.block_type.nbytes
        for t in range(n_pairs + 1):
            st = t % K_STAGES
            if t >= V_STAGES:
                # Iteration t - V_STAGES released (both warpgroups) frees V pair t-1's stage, and, the consumers
                # releasing in order, K pair t's stage (last used by iteration t - K_STAGES) before it.
                prev = t - V_STAGES
                mbarrier.wait(empty.index(prev % K_STAGES), (prev // K_STAGES) & 1)
            bar = ready.index(st)
            if t == 0:
                mbarrier.expect(bar, K_BYTES)
                _issue_pair(k_desc, k_smem.index(0), bar, lut_row, 0, n_sel, k_row0, k_col0, BLOCK_KB, False)
            elif t == n_pairs:
                mbarrier.expect(bar, V_BYTES)
                _issue_pair(v_desc, v_smem.index((t - 1) % V_STAGES), bar, lut_row, t - 1, n_sel, v_row0, v_col0,
                            BLOCK_KB, PV_FP8)
            else:
                mbarrier.expect(bar, K_BYTES + V_BYTES)
                _issue_pair(k_desc, k_smem.index(st), bar, lut_row, t, n_sel, k_row0, k_col0, BLOCK_KB, False)
                _issue_pair(v_desc, v_smem.index((t - 1) % V_STAGES), bar, lut_row, t - 1, n_sel, v_row0, v_col0,
                            BLOCK_KB, PV_FP8)

    @gluon.jit
    def _softmax_update(s, m_i, l_i, qk_scale, lut_row, pair, n_sel, L, s_layout: gl.constexpr,
                        BLOCK_KB: gl.constexpr, MASK: gl.constexpr, P_SHIFT: gl.constexpr):
        # Online softmax over one 128-key score tile; m in log2 units (scale folded into one FMA per score).
        # P_SHIFT: P comes out times 2^P_SHIFT (l too, so o / l is unchanged): fp8 P then keeps its small
        # probabilities out of e4m3's subnormal range.
        if MASK:
            # Keys past L (partial last block) and the repeated block of an odd tail score -inf; slot 2*pair
            # always holds a real key, so m stays finite.
            offs = gl.arange(0, 2 * BLOCK_KB, layout=gl.SliceLayout(0, s_layout))
            slot = 2 * pair + offs // BLOCK_KB
            blk = gl.load(lut_row + gl.minimum(slot, n_sel - 1))
            ok = (slot < n_sel) & (blk * BLOCK_KB + offs % BLOCK_KB < L)
            s = gl.where(ok[None, :], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * qk_scale - (m_new - P_SHIFT)[:, None])
        l_i = l_i * alpha + gl.sum(p, axis=1)
        return p, m_new, l_i, alpha

    @gluon.jit
    def _v_operand(v_tile, PV_FP8: gl.constexpr):
        # P.V's B operand as [keys, D]: bf16 V is staged that way; fp8 V is staged transposed ([D, keys],
        # K-major, the only B layout fp8 wgmma takes) and read through a permuted view.
        if PV_FP8:
            return v_tile.permute((1, 0))
        else:
            return v_tile

    @gluon.jit
    def _stage_p(p_new, p_bufs, j, p_layout: gl.constexpr, PV_FP8: gl.constexpr):
        # P_j as the A operand of its P.V product. bf16: registers. fp8: shared memory (buffer j % 2; the other
        # one may still be read by P_{j-1}.V_{j-1}), as Triton 3.6 cannot hold 8-bit register operands of an
        # in-flight wgmma (its wait takes 16- and 32-bit values only). The barrier: all four warps' rows are
        # written before any warp issues the product.
        if PV_FP8:
            p_bufs.index(j % 2).store(p_new.to(gl.float8e4nv))
            fence_async_shared()
            _barrier()
            return 0
        else:
            return gl.convert_layout(p_new.to(gl.bfloat16), p_layout)

    @gluon.jit
    def _p_operand(p, p_bufs, j, PV_FP8: gl.constexpr):
        if PV_FP8:
            return p_bufs.index(j % 2)
        else:
            return p

    @gluon.jit
    def _pair_step(
        j, p, p_bufs, o, m_i, l_i, q_half, k_smem, v_smem, ready, empty, lut_row, n_sel, L,
        qk_scale, s_layout: gl.constexpr, p_layout: gl.constexpr, ROWS: gl.constexpr, BLOCK_KB: gl.constexpr,
        K_STAGES: gl.constexpr, V_STAGES: gl.constexpr, MASK: gl.constexpr, PV_FP8: gl.constexpr,
        P_SHIFT: gl.constexpr,
    ):
        # Scores of pair j, then P_{j-1}.V_{j-1} behind them on the tensor cores; the softmax of pair j runs while
        # the latter is in flight. K pair j and V pair j-1 are released together (one arrive per warpgroup) once
        # the P.V product is done.
        ks = j % K_STAGES
        vs = (j - 1) % V_STAGES
        mbarrier.wait(ready.index(ks), (j // K_STAGES) & 1)
        s = warpgroup_mma(q_half, k_smem.index(ks).permute((1, 0)),
                          gl.zeros([ROWS, 2 * BLOCK_KB], gl.float32, s_layout),
                          use_acc=False, is_async=True)
        o = warpgroup_mma(_p_operand(p, p_bufs, j - 1, PV_FP8), _v_operand(v_smem.index(vs), PV_FP8), o,
                          is_async=True)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
        p_new, m_i, l_i, alpha = _softmax_update(s, m_i, l_i, qk_scale, lut_row, j, n_sel, L, s_layout, BLOCK_KB,
                                                 MASK, P_SHIFT)
        p_new = _stage_p(p_new, p_bufs, j, p_layout, PV_FP8)
        if PV_FP8:
            o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
        else:
            o, p = warpgroup_mma_wait(num_outstanding=0, deps=(o, p))
        mbarrier.arrive(empty.index(ks), count=1)
        o = o * gl.convert_layout(alpha, gl.SliceLayout(1, o.type.layout))[:, None]
        return p_new, o, m_i, l_i

    @gluon.jit
    def _consumer(q_smem, k_smem, v_smem, m_smem, p_bufs, q_bar, m_bar, ready, empty, Out,
                  lut_row, n_sel, n_pairs, L, qk_scale, row0, out_base, sol, sod, ksum_row, bias_ptr, vscale_row,
                  WG: gl.constexpr, ROWS: gl.constexpr, BLOCK_KB: gl.constexpr, HEAD_DIM: gl.constexpr,
                  K_STAGES: gl.constexpr, V_STAGES: gl.constexpr, FUSE_LINEAR: gl.constexpr, PV_FP8: gl.constexpr):
        # One warpgroup: query rows [WG*ROWS, (WG+1)*ROWS) of the program's block, over all its key pairs.
        BLOCK_N: gl.constexpr = 2 * BLOCK_KB
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        # wgmma's K per instruction is 32 bytes of operand: 16 bf16 or 32 fp8 values.
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 32 if PV_FP8 else 16])
        lin_acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                                 instr_shape=[16, HEAD_DIM, 16])
        # Register A operands: bf16 P (the fp8 path stages P in shared memory instead) and phi(q).
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        lin_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=lin_acc_layout, k_width=2)
        P_SHIFT: gl.constexpr = 8.0 if PV_FP8 else 0.0
        q_half = q_smem.slice(WG * ROWS, ROWS)

        m_i = gl.full([ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))
        o = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
        # Pair 0: scores and softmax only (masked: it may also be the last pair).
        mbarrier.wait(q_bar, 0)
        mbarrier.wait(ready.index(0), 0)
        s = warpgroup_mma(q_half, k_smem.index(0).permute((1, 0)),
                          gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False,
                          is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        mbarrier.arrive(empty.index(0), count=1)
        p, m_i, l_i, _ = _softmax_update(s, m_i, l_i, qk_scale, lut_row, 0, n_sel, L, s_layout, BLOCK_KB, True,
                                         P_SHIFT)
        p = _stage_p(p, p_bufs, 0, p_layout, PV_FP8)

        for j in range(1, n_pairs - 1):
            p, o, m_i, l_i = _pair_step(
                j, p, p_bufs, o, m_i, l_i, q_half, k_smem, v_smem, ready, empty, lut_row,
                n_sel, L, qk_scale, s_layout, p_layout, ROWS, BLOCK_KB, K_STAGES, V_STAGES, False, PV_FP8, P_SHIFT,
            )
        if n_pairs > 1:
            p, o, m_i, l_i = _pair_step(
                n_pairs - 1, p, p_bufs, o, m_i, l_i, q_half, k_smem, v_smem, ready, empty, lut_row, n_sel, L,
                qk_scale, s_layout, p_layout, ROWS, BLOCK_KB, K_STAGES, V_STAGES, True, PV_FP8, P_SHIFT,
            )
        last = n_pairs - 1
        vs = last % V_STAGES
        mbarrier.wait(ready.index(n_pairs % K_STAGES), (n_pairs // K_STAGES) & 1)
        o = warpgroup_mma(_p_operand(p, p_bufs, last, PV_FP8), _v_operand(v_smem.index(vs), PV_FP8), o,
                          is_async=True)
        o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))

        o = o / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
        offs_m = row0 + WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, o_layout))
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        if PV_FP8:
            o = o * gl.load(vscale_row + offs_d)[None, :]  # fp8 V was quantized per channel
        if FUSE_LINEAR:
            # SLA's linear branch for these rows: phi(q) M / (1e-5 + phi(q).ksum) + bias, where M = kv proj_l^T
            # (bf16, folded on the host), so one more wgmma; phi = softmax over the head dim.
            qf = q_half.load(lin_acc_layout).to(gl.float32)
            e = gl.exp2((qf - gl.max(qf, axis=1)[:, None]) * 1.4426950408889634)
            phi = e / gl.sum(e, axis=1)[:, None]
            ksum = gl.load(ksum_row + gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, lin_acc_layout)))
            denom = 1e-5 + gl.sum(phi * ksum[None, :], axis=1)
            mbarrier.wait(m_bar, 0)
            lin = warpgroup_mma(gl.convert_layout(phi.to(m_smem.dtype), lin_layout), m_smem,
                                gl.zeros([ROWS, HEAD_DIM], gl.float32, lin_acc_layout), use_acc=False, is_async=True)
            lin = warpgroup_mma_wait(num_outstanding=0, deps=(lin,))
            o = o + gl.convert_layout(lin / denom[:, None], o_layout) + gl.load(bias_ptr + offs_d)[None, :]
        gl.store(out_base + offs_m[:, None] * sol + offs_d[None, :] * sod, o.to(Out.dtype.element_ty),
                 mask=(offs_m < L)[:, None])

    @gluon.jit
    def _sla_sparse_gluon_kernel(
        q_desc, k_desc, v_desc, m_desc, Out, LUT, KSUM, BIAS, VSCALE,
        L, n_heads, n_sel, qk_scale,
        q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch,
        sob, soh, sol, sod,
        slut_bh, slut_q,
        BLOCK_M: gl.constexpr, BLOCK_KB: gl.constexpr, HEAD_DIM: gl.constexpr,
        K_STAGES: gl.constexpr, V_STAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr, FUSE_LINEAR: gl.constexpr,
        PV_FP8: gl.constexpr,
    ):
        # Warp-specialised as FlashAttention-3: two consumer warpgroups (64 query rows each, this partition and a
        # worker) and one producer warp; full/empty barriers per stage instead of CTA-wide barriers, so the two
        # warpgroups drift apart and one's softmax overlaps the other's products.
        BLOCK_N: gl.constexpr = 2 * BLOCK_KB
        ROWS: gl.constexpr = BLOCK_M // 2
        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // n_heads
        h = bh % n_heads
        lut_row = LUT + bh * slut_bh + pid_m * slut_q
        n_pairs = (n_sel + 1) // 2

        q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [K_STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        if PV_FP8:  # V^T tiles [D, keys]; P staged in shared memory, two buffers per consumer warpgroup
            v_smem = gl.allocate_shared_memory(v_desc.dtype, [V_STAGES, HEAD_DIM, BLOCK_N], v_desc.layout)
            p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, BLOCK_N], gl.float8e4nv)
            p_bufs0 = gl.allocate_shared_memory(gl.float8e4nv, [2, ROWS, BLOCK_N], p_layout)
            p_bufs1 = gl.allocate_shared_memory(gl.float8e4nv, [2, ROWS, BLOCK_N], p_layout)
        else:
            v_smem = gl.allocate_shared_memory(v_desc.dtype, [V_STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
            p_bufs0 = q_smem  # unused
            p_bufs1 = q_smem
        # The linear branch's matrix takes the last 32 KB: 192 KB of q/K/V stages + 32 KB fit the 227 KB a CTA gets.
        m_smem = gl.allocate_shared_memory(m_desc.dtype, [HEAD_DIM, HEAD_DIM], m_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        m_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        # Per iteration t (see _producer): K pair t and V pair t-1 ready; both released by the two warpgroups.
        ready = gl.allocate_shared_memory(gl.int64, [K_STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [K_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        mbarrier.init(m_bar, count=1)
        for i in gl.static_range(K_STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)

        out_base = Out + b * sob + h * soh
        row0 = pid_m * BLOCK_M
        gl.warp_specialize(
            [
                (_consumer, (q_smem, k_smem, v_smem, m_smem, p_bufs0, q_bar, m_bar, ready, empty, Out, lut_row,
                             n_sel, n_pairs, L, qk_scale, row0, out_base, sol, sod, KSUM + bh * HEAD_DIM, BIAS,
                             VSCALE + bh * HEAD_DIM, gl.constexpr(0),
                             ROWS, BLOCK_KB, HEAD_DIM, K_STAGES, V_STAGES, FUSE_LINEAR, PV_FP8)),
                (_consumer, (q_smem, k_smem, v_smem, m_smem, p_bufs1, q_bar, m_bar, ready, empty, Out, lut_row,
                             n_sel, n_pairs, L, qk_scale, row0, out_base, sol, sod, KSUM + bh * HEAD_DIM, BIAS,
                             VSCALE + bh * HEAD_DIM, gl.constexpr(1),
                             ROWS, BLOCK_KB, HEAD_DIM, K_STAGES, V_STAGES, FUSE_LINEAR, PV_FP8)),
                (_producer, (q_desc, k_desc, v_desc, m_desc, q_smem, k_smem, v_smem, m_smem, q_bar, m_bar, ready,
                             empty, lut_row, n_sel, n_pairs, b * q_rb + h * q_rh + row0, h * q_ch,
                             b * k_rb + h * k_rh, h * k_ch, b * v_rb + h * v_rh, h * v_ch, bh * HEAD_DIM, BLOCK_KB,
                             K_STAGES, V_STAGES, FUSE_LINEAR, PV_FP8)),
            ],
            [4, 1],
            [CONSUMER_REGS, 24],
        )
        mbarrier.invalidate(q_bar)
        mbarrier.invalidate(m_bar)
        for i in gl.static_range(K_STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))


_GL_DTYPES = (
    {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float8_e4m3fn: gl.float8e4nv}
    if HAVE_GLUON
    else {}
)


def descriptor(x: torch.Tensor, block_rows: int, layout_map: tuple[int, int, int, int, int, int]) -> TensorDescriptor:
    """A Gluon TMA descriptor over the 2-D view `layout_map` (see sla_triton._tma_layout) with [block_rows, D]
    boxes in the 128-byte-swizzled shared layout wgmma reads."""
    rows, cols, row_stride = layout_map[:3]
    block = [block_rows, x.shape[-1]]
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[x.dtype])
    return TensorDescriptor(x, [rows, cols], [row_stride, 1], block, layout)


def transposed_v_descriptor(vt: torch.Tensor, head_dim: int, block_k: int) -> TensorDescriptor:
    """A descriptor over fp8 V^T ((B*H*D, L_pad), turbokernels.sla_triton.transpose_v_fp8) with [D, block_k] boxes.

    Two boxes fill one [D, 2*block_k] stage: with a 64-byte swizzle (block_k fp8 keys per row) the stage is two
    such boxes side by side, so each lands in its own half and wgmma still reads the whole stage as K = 128."""
    layout = gl.NVMMASharedLayout(swizzle_byte_width=block_k, element_bitwidth=8, rank=2)
    return TensorDescriptor(vt, list(vt.shape), [vt.stride(0), 1], [head_dim, block_k], layout)
