"""W8A8 int8 linear with 128x128 tile scales (the published -quant checkpoints), in Triton.

Semantics of turbokernels.reference.int8_linear / quantize_int8_blockwise: activations are quantized per 128x128 tile
of their (tokens, in) view exactly as upstream's quantizer does (x * (128 / max(absmax, 1e-8)), round half to even,
clamp to [-128, 127], scale = amax / 128); the GEMM multiplies
int8 tiles on the tensor cores (int32 accumulation) and dequantizes every 128-wide K step with the product of the
activation-tile and weight-tile scales, accumulating in fp32.
"""

from __future__ import annotations

import math

import torch

from turbokernels.torch_compile import opaque_to_compile

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

TILE = 128
# Tile configurations autotuned over; the fastest at the DiT's shapes comes first (bench/kernels_micro.py; the
# measured throughputs are in bench/README.md).
GEMM_CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "SKEW": False},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 4, "SKEW": False},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 5, "SKEW": False},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "SKEW": True},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 4, "SKEW": True},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "SKEW": True},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "SKEW": True},
)



if HAVE_TRITON:

    @triton.jit
    def _round_half_even(y):
        # rint without libdevice (which Triton's interpreter lacks) and without floor(y + 0.5), which misrounds
        # the float just below 0.5: on |y| every step is exact (a - floor(a) by Sterbenz), halves go to even.
        a = tl.abs(y)
        whole = tl.floor(a)
        frac = a - whole
        odd = (whole - 2.0 * tl.floor(whole * 0.5)) != 0.0
        up = (frac > 0.5) | ((frac == 0.5) & odd)
        r = tl.where(up, whole + 1.0, whole)
        return tl.where(y < 0.0, -r, r)

    @triton.jit
    def _quantize_tiles_kernel(
        X, QX, SCALE, rows, cols, sxr, sxc, n_col_tiles,
        TILE_R: tl.constexpr, TILE_C: tl.constexpr,
    ):
        tr = tl.program_id(0)
        tc = tl.program_id(1)
        offs_r = tr * TILE_R + tl.arange(0, TILE_R)
        offs_c = tc * TILE_C + tl.arange(0, TILE_C)
        mask = (offs_r[:, None] < rows) & (offs_c[None, :] < cols)
        x = tl.load(X + offs_r[:, None] * sxr + offs_c[None, :] * sxc, mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-8)
        # IEEE division (Triton's "/" is approximate on GPU) and one rounded product, then round half to even:
        # the reference's fp32 operations in its order, so every value lands on the same side of each tie. The
        # launch turns FMA contraction off so the product is rounded before anything else reads it.
        multiplier = tl.math.div_rn(tl.full((1,), 128.0, tl.float32), amax + tl.zeros((1,), tl.float32))
        q = _round_half_even(x * multiplier)
        q = tl.minimum(tl.maximum(q, -128.0), 127.0)
        tl.store(QX + offs_r[:, None] * cols + offs_c[None, :], q.to(tl.int8), mask=mask)
        tl.store(SCALE + tr * n_col_tiles + tc, amax * 0.0078125)  # / 128, exact

    @triton.jit
    def _int8_gemm_kernel(
        A, SA, W, SW, BIAS, C, M, N, K,
        sam, sak, swn, swk, scm, scn, n_k_tiles,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, SCALE_TILE: tl.constexpr, SKEW: tl.constexpr,
    ):
        # Grouped ordering: GROUP_M row-blocks share each weight column-block while it sits in L2.
        pid = tl.program_id(0)
        n_pid_m = tl.cdiv(M, BLOCK_M)
        n_pid_n = tl.cdiv(N, BLOCK_N)
        group = pid // (GROUP_M * n_pid_n)
        first_m = group * GROUP_M
        group_size = tl.minimum(n_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group_size)
        pid_n = (pid % (GROUP_M * n_pid_n)) // group_size

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        n_ok = offs_n < N
        a_ptrs = A + offs_m[:, None] * sam + offs_k[None, :] * sak
        w_ptrs = W + offs_n[None, :] * swn + offs_k[:, None] * swk
        sa_ptrs = SA + (offs_m // SCALE_TILE) * n_k_tiles
        sw_ptrs = SW + (offs_n // SCALE_TILE) * n_k_tiles
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # SKEW: scale the previous step's integer product while this step's runs on the tensor cores.
        prev = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        prev_scale = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + offs_k) < K
            a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0)
            w = tl.load(w_ptrs, mask=n_ok[None, :] & k_ok[:, None], other=0)
            part = tl.dot(a, w, out_dtype=tl.int32)
            kt = k0 // SCALE_TILE
            sa = tl.load(sa_ptrs + kt, mask=m_ok, other=0.0)
            sw = tl.load(sw_ptrs + kt, mask=n_ok, other=0.0)
            if SKEW:
                acc += prev.to(tl.float32) * prev_scale
                prev = part
                prev_scale = sa[:, None] * sw[None, :]
            else:
                acc += part.to(tl.float32) * (sa[:, None] * sw[None, :])
            a_ptrs += BLOCK_K * sak
            w_ptrs += BLOCK_K * swk
        if SKEW:
            acc += prev.to(tl.float32) * prev_scale
        if HAS_BIAS:
            acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(C + offs_m[:, None] * scm + offs_n[None, :] * scn, acc.to(C.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


@opaque_to_compile
def quantize_int8_blockwise(w: torch.Tensor, block: int = TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [rows, cols], fp32 scale [ceil(rows/block), ceil(cols/block)]) of a 2-D tensor; see the reference."""
    if w.dim() != 2:
        raise ValueError(f"quantize_int8_blockwise expects a 2-D tensor, got shape {tuple(w.shape)}")
    if block & (block - 1):
        raise ValueError(f"quantize_int8_blockwise kernel needs a power-of-two block, got {block}")
    rows, cols = w.shape
    n_r, n_c = math.ceil(rows / block), math.ceil(cols / block)
    quantized = torch.empty((rows, cols), device=w.device, dtype=torch.int8)
    scale = torch.empty((n_r, n_c), device=w.device, dtype=torch.float32)
    _quantize_tiles_kernel[(n_r, n_c)](
        w, quantized, scale, rows, cols, w.stride(0), w.stride(1), n_c, TILE_R=block, TILE_C=block, num_warps=8,
        enable_fp_fusion=False,
    )
    return quantized, scale


def _gemm_config(m: int) -> dict[str, int]:
    # 128x128 keeps the int32 partial and the fp32 accumulator in registers (8 warps); candidates are timed in
    # bench/kernels_micro.py.
    return dict(GEMM_CONFIGS[0])


def int8_gemm(
    qx: torch.Tensor, sx: torch.Tensor, int8_weight: torch.Tensor, scale: torch.Tensor,
    bias: torch.Tensor | None, out_dtype: torch.dtype, config: dict[str, int] | None = None,
) -> torch.Tensor:
    """(M, N) = dequant(qx, sx) @ dequant(int8_weight, scale)^T + bias, both operands tile-quantized (TILE)."""
    m, k = qx.shape
    n = int8_weight.shape[0]
    if int8_weight.shape[1] != k:
        raise ValueError(f"int8 GEMM: activation has {k} features, weight {tuple(int8_weight.shape)} expects "
                         f"{int8_weight.shape[1]}")
    n_k_tiles = math.ceil(k / TILE)
    if tuple(scale.shape) != (math.ceil(n / TILE), n_k_tiles):
        raise ValueError(f"int8 GEMM: weight scale shape {tuple(scale.shape)} does not match weight "
                         f"{tuple(int8_weight.shape)} in {TILE}x{TILE} tiles")
    cfg = dict(config or _gemm_config(m))
    out = torch.empty((m, n), device=qx.device, dtype=out_dtype)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    sw = scale.float().contiguous()
    _int8_gemm_kernel[grid](
        qx, sx, int8_weight, sw, bias if bias is not None else sw, out, m, n, k,
        qx.stride(0), qx.stride(1), int8_weight.stride(0), int8_weight.stride(1), out.stride(0), out.stride(1),
        n_k_tiles, HAS_BIAS=bias is not None, SCALE_TILE=TILE, **cfg,
    )
    return out


@opaque_to_compile
def int8_linear(
    x: torch.Tensor, int8_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Drop-in for turbokernels.reference.int8_linear: x (..., in) -> (..., out) in x's dtype."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    qx, sx = quantize_int8_blockwise(x2, TILE)
    out = int8_gemm(qx, sx, int8_weight, scale, bias, x.dtype)
    return out.reshape(*lead, int8_weight.shape[0])
