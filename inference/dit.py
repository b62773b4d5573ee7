"""The Wan2.2 A14B diffusion transformer (one expert) in plain PyTorch.

Module and parameter names are the official checkpoint keys (spec section 2, "Official key names"), so weights
load strictly without renaming. Every op with a fast kernel goes through turbokernels.dispatch.

Precision follows upstream: the residual stream, timestep path, modulation and output head run in fp32; the
linears, attention and text embedding run in the compute dtype (the dtype of the patch embedding's weight,
bf16 on GPU). SLA's proj_l stays fp32.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from inference.configs import DiTConfig
from turbokernels import dispatch
from turbokernels.fp8_linear import (
    Fp8Linear,
    Fp8Rows,
    convert_linears_to_fp8,
    fuse_fp8_linears,
    quantize_activation,
    split_fp8_linear,
)

if TYPE_CHECKING:
    from inference.parallel.dit import SequenceShard

ATTENTION_KINDS = ("sla", "dense")

# A block's FFN branch output and its gate: the residual update x + y * gate, not yet applied to the stream.
PendingResidual = tuple[torch.Tensor, torch.Tensor]


def timestep_sinusoid(freq_dim: int, t: torch.Tensor) -> torch.Tensor:
    """[B] timesteps (already x1000) -> [B, freq_dim] fp32: cos half then sin half, formed in fp64."""
    half = freq_dim // 2
    position = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = position[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def _fp32_sequential(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Sequential with its Linears in fp32 whatever their stored dtype (upstream's fp32 autocast)."""
    for layer in seq:
        if isinstance(layer, nn.Linear):
            bias = None if layer.bias is None else layer.bias.float()
            x = F.linear(x.float(), layer.weight.float(), bias)
        else:
            x = layer(x)
    return x


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned weight; fp32 math via turbokernels.dispatch."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.rms_norm(x, self.weight, self.eps)


class SparseLinearAttention(nn.Module):
    """SLA (spec section 3). Holds the learned `proj_l` of the linear branch, kept in fp32."""

    def __init__(self, head_dim: int, topk: float, block_q: int, block_k: int) -> None:
        super().__init__()
        self.topk = topk
        self.block_q = block_q
        self.block_k = block_k
        self.proj_l = nn.Linear(head_dim, head_dim, dtype=torch.float32)
        # The sparse branch's P.V in e4m3 on the GPU kernel (WanDiT.use_fp8_pv); exact when False.
        self.pv_fp8 = False

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return dispatch.sla_attention(
            q, k, v, self.proj_l.weight, self.proj_l.bias, self.topk, self.block_q, self.block_k,
            pv_fp8=self.pv_fp8,
        )


class SLAAttentionOp(nn.Module):
    """Wrapper that exists only so the TurboDiffusion key path `attn_op.local_attn.proj_l` matches."""

    def __init__(self, head_dim: int, topk: float, block_q: int, block_k: int) -> None:
        super().__init__()
        self.local_attn = SparseLinearAttention(head_dim, topk, block_q, block_k)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.local_attn(q, k, v)


class AttentionProjections(nn.Module):
    """q, k, v, o and the q/k RMSNorms: the parameters (and official key names) both attentions share."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)


class SelfAttention(AttentionProjections):
    def __init__(self, cfg: DiTConfig, attention: str) -> None:
        super().__init__(cfg)
        self.attn_op = (
            SLAAttentionOp(cfg.head_dim, cfg.sla_topk, cfg.sla_block_q, cfg.sla_block_k) if attention == "sla" else None
        )
        # One fp8 GEMM for q, k and v (WanDiT.use_fp8_linears); q, k and v are then None (one copy of the weights).
        self.qkv: Fp8Linear | None = None
        # Set while a group runs the model sequence-parallel (inference/parallel/dit.py).
        self.sequence_parallel: SequenceShard | None = None

    def fuse_qkv(self, fuse: bool) -> None:
        """Move between separate fp8 q/k/v layers and one fused layer (the weights are held once either way)."""
        if fuse and self.qkv is None:
            self.qkv = fuse_fp8_linears([self.q, self.k, self.v])
            self.q = self.k = self.v = None
        elif not fuse and self.qkv is not None:
            dim = self.qkv.in_features
            self.q, self.k, self.v = split_fp8_linear(self.qkv, [dim, dim, dim])
            self.qkv = None

    def forward(
        self, x: torch.Tensor | Fp8Rows, rope_cos: torch.Tensor, rope_sin: torch.Tensor
    ) -> torch.Tensor:
        b, length, dim = x.shape
        if self.qkv is not None:
            q_in, k_in, v_in = self.qkv(x).split(dim, dim=-1)  # strided views; the kernels take them as they are
        else:
            q_in, k_in, v_in = self.q(x), self.k(x), self.v(x)
        if self.sequence_parallel is not None:
            # Ulysses: this rank's tokens of all heads are exchanged for all tokens of its heads, and back.
            return self.o(self.sequence_parallel.attention(self, q_in, k_in, v_in, rope_cos, rope_sin))
        # RMSNorm over all heads' features, then RoPE per head: one fused pass on GPU.
        q = dispatch.rms_norm_rope(q_in, self.norm_q.weight, self.norm_q.eps, rope_cos, rope_sin, self.num_heads)
        k = dispatch.rms_norm_rope(k_in, self.norm_k.weight, self.norm_k.eps, rope_cos, rope_sin, self.num_heads)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v_in.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
        out = dispatch.dense_attention(q, k, v) if self.attn_op is None else self.attn_op(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, length, dim))


class CrossAttention(AttentionProjections):
    """Attention from video tokens to the embedded text; no RoPE, no mask (padding is zeros upstream too)."""

    def forward(self, x: torch.Tensor | Fp8Rows, context: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q = self.norm_q(self.q(x)).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.norm_k(self.k(context)).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(context).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        out = dispatch.dense_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, length, dim))


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, attention: str) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg, attention)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim)
        )
        self.modulation = nn.Parameter(torch.zeros(1, 6, cfg.dim))
        # Set once the block's linears are fp8 (WanDiT.use_fp8_linears): the norms then write fp8 rows for them.
        self.fp8_inputs = False

    def _norm(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | Fp8Rows:
        """The modulated LayerNorm that feeds a linear: fp8 rows for fp8 linears, else `dtype`."""
        if self.fp8_inputs:
            return dispatch.layer_norm_modulate_fp8(x, shift, scale, self.eps, dtype)
        return dispatch.layer_norm_modulate(x, shift, scale, self.eps, out_dtype=dtype)

    def _ffn(self, h: torch.Tensor | Fp8Rows) -> torch.Tensor:
        if not self.fp8_inputs:
            return self.ffn(h)
        # GELU and the fp8 quantization of the hidden activation in one pass.
        return self.ffn[2](quantize_activation(self.ffn[0](h), gelu=True))

    def forward(
        self,
        x: torch.Tensor,
        time_mod: torch.Tensor,
        context: torch.Tensor,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        *,
        pending: PendingResidual | None = None,
        defer_ffn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, PendingResidual]:
        """x: fp32 residual stream [B, L, dim]; time_mod: fp32 [B, 6, dim]; context: [B, text_len, dim].

        Called with neither keyword the block stands alone and returns the finished stream. WanDiT.forward chains
        blocks so that the FFN update of one is fused with the first norm of the next (one pass over the fp32
        stream, not two): `pending` is the previous block's unapplied (y, gate), applied here before anything
        else, and `defer_ffn` returns (x, this block's (y, gate)) instead of applying it."""
        dtype = context.dtype
        mod = self.modulation.float() + time_mod
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.chunk(6, dim=1)

        fp8 = self.fp8_inputs
        # Each residual update is fused with the norm that reads its result (one pass over the fp32 stream).
        if pending is None:
            h = self._norm(x, shift_sa, scale_sa, dtype)
        else:
            x, h = dispatch.residual_norm(x, *pending, shift_sa, scale_sa, self.eps, dtype, fp8=fp8)
        y = self.self_attn(h, rope_cos, rope_sin)

        # The affine LayerNorm is the same map as a modulation with shift = bias and scale = weight - 1.
        x, h = dispatch.residual_norm(
            x, y, gate_sa, self.norm3.bias.float(), self.norm3.weight.float() - 1, self.eps, dtype, fp8=fp8
        )
        y = self.cross_attn(h, context)

        x, h = dispatch.residual_norm(x, y, None, shift_ff, scale_ff, self.eps, dtype, fp8=fp8)
        y = self._ffn(h)
        if defer_ffn:
            return x, (y, gate_ff)
        return dispatch.gated_residual(x, y, gate_ff)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """x: fp32 [B, L, dim]; time_emb: fp32 [B, dim] (the time embedding, not its projection). fp32 out."""
        mod = self.modulation.float() + time_emb[:, None, :]
        shift, scale = mod.chunk(2, dim=1)
        h = dispatch.layer_norm_modulate(x, shift, scale, self.eps)
        return F.linear(h, self.head.weight.float(), self.head.bias.float())


def _per_layer_attention(attention: str | Sequence[str], num_layers: int) -> list[str]:
    kinds = [attention] * num_layers if isinstance(attention, str) else list(attention)
    if len(kinds) != num_layers:
        raise ValueError(f"attention lists {len(kinds)} layers but the model has {num_layers}")
    for i, kind in enumerate(kinds):
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention for layer {i} is {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")
    return kinds


# Leading blocks that run every kernel a forward runs (the first has no previous block's FFN update to add, the
# second does; the rest repeat the second): what warms up or precompiles a forward's kernels.
KERNEL_BLOCKS = 2


class WanDiT(nn.Module):
    """One Wan2.2 I2V expert. forward(x [B, 36, f, h, w], t [B] (x1000), context [B, text_len, text_dim])
    returns the predicted velocity [B, 16, f, h, w] in fp32."""

    def __init__(self, cfg: DiTConfig, attention: str | Sequence[str] = "sla") -> None:
        super().__init__()
        self.cfg = cfg
        self.attention = _per_layer_attention(attention, cfg.num_layers)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg, kind) for kind in self.attention)
        self.head = Head(cfg)
        self._rope_cache: dict[tuple[tuple[int, int, int], torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        # Set while a group runs the model sequence-parallel (inference/parallel/dit.py).
        self.sequence_parallel: SequenceShard | None = None
        self._block_limit: int | None = None  # see first_blocks()

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def use_fp8_linears(self, *, fuse: bool = True) -> int:
        """Run the block linears in fp8 (turbokernels.fp8_linear; weights quantized per output row, once). With `fuse`
        each self-attention's q/k/v become one GEMM and the norms feed the linears fp8 rows directly (GELU and
        quantization fused too); without, every linear quantizes its own input (the first fp8 path, kept for
        comparison). Returns the number of linears converted by this call."""
        count = convert_linears_to_fp8(self)
        for block in self.blocks:
            block.self_attn.fuse_qkv(fuse)
            block.fp8_inputs = fuse
        return count

    def use_fp8_pv(self, enabled: bool = True) -> None:
        """SLA's sparse branch with its P.V product in e4m3 (per-channel V scales; half of TurboDiffusion's SageSLA
        precision) on the Gluon kernel, approximate and off by default; False goes back to the exact bf16 product."""
        for module in self.modules():
            if isinstance(module, SparseLinearAttention):
                module.pv_fp8 = enabled

    def set_sla_topk(self, topk: float) -> None:
        """Change the kept fraction of key blocks of every SLA layer (1.0 keeps all)."""
        for module in self.modules():
            if isinstance(module, SparseLinearAttention):
                module.topk = topk

    @contextmanager
    def first_blocks(self, count: int) -> Iterator[None]:
        """Forwards inside run only the first `count` blocks: a warm-up that reaches every kernel (KERNEL_BLOCKS)
        without paying for the whole stack. The output is not the model's."""
        self._block_limit = count
        try:
            yield
        finally:
            self._block_limit = None

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (grid, device)
        if key not in self._rope_cache:
            cos, sin = dispatch.rope_tables(grid, self.cfg.head_dim, self.cfg.rope_theta)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
        return self._rope_cache[key]

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> None:
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"DiT input must be [B, {cfg.in_dim}, f, h, w], got {tuple(x.shape)}")
        for size, patch, axis in zip(x.shape[2:], cfg.patch_size, "fhw", strict=True):
            if size % patch:
                raise ValueError(f"DiT input {axis}={size} is not a multiple of the patch size {patch}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"timestep must be [B={x.shape[0]}], got {tuple(t.shape)}")
        if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.text_dim:
            raise ValueError(f"context must be [B={x.shape[0]}, text_len, {cfg.text_dim}], got {tuple(context.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self._check_inputs(x, t, context)
        cfg = self.cfg
        dtype = self.compute_dtype
        batch = x.shape[0]
        tokens = self.patch_embedding(x.to(dtype))
        grid = (tokens.shape[2], tokens.shape[3], tokens.shape[4])
        residual = tokens.flatten(2).transpose(1, 2).float()
        rope_cos, rope_sin = self.rope(grid, x.device)
        if self.sequence_parallel is not None:
            # This rank's share of the tokens through the blocks and the head; gathered back before unpatchify.
            residual, rope_cos, rope_sin = self.sequence_parallel.scatter_tokens(residual, rope_cos, rope_sin)

        time_emb = _fp32_sequential(self.time_embedding, timestep_sinusoid(cfg.freq_dim, t))
        time_mod = _fp32_sequential(self.time_projection, time_emb).unflatten(1, (6, cfg.dim))
        text = self.text_embedding(context.to(dtype))

        # Each block leaves its FFN update to the next block's first norm, which applies it in the same pass over
        # the fp32 stream.
        pending: PendingResidual | None = None
        for block in itertools.islice(self.blocks, self._block_limit):
            residual, pending = block(residual, time_mod, text, rope_cos, rope_sin, pending=pending, defer_ffn=True)
        # Not fused into the head's norm: with an fp32 output the fused kernel rounds that norm differently (1e-6)
        # and saves little, once a forward (bench/README.md).
        if pending is not None:
            residual = dispatch.gated_residual(residual, *pending)

        out = self.head(residual, time_emb)
        if self.sequence_parallel is not None:
            out = self.sequence_parallel.gather_tokens(out)
        return self.unpatchify(out, grid, batch)

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int], batch: int) -> torch.Tensor:
        """[B, L, pt*ph*pw*c] with channels last in each patch (upstream's order) -> [B, c, f*pt, h*ph, w*pw]."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        c = self.cfg.out_dim
        out = out.view(batch, f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(batch, c, f * pt, h * ph, w * pw)
