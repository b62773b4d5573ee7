"""Sequence-parallel DiT (Ulysses): each rank of a group holds a contiguous 1/N of the video tokens through the
whole network; only self-attention needs the other tokens.

Around each self-attention an all-to-all turns "my tokens, all heads" into "all tokens, my heads" (heads split N
ways), so the attention, and SLA's block map with it, is computed per head over the full sequence exactly as on
one GPU; a second all-to-all turns the output back. The q/k RMSNorm runs before the exchange (it spans all heads of
a token), RoPE with the rank's rows of the tables. Cross-attention, the FFN, the norms and the head are per token
and stay local. The output is gathered so that every rank returns the full velocity: the sampler then runs the same
update on every rank, which keeps their latents identical without another broadcast.

The model code calls in through two hooks, `WanDiT.sequence_parallel` and `SelfAttention.sequence_parallel`, both
None outside `sequence_parallel(...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from inference.parallel.group import ParallelGroup
from turbokernels import dispatch

if TYPE_CHECKING:
    from inference.dit import SelfAttention, WanDiT


class SequenceShard:
    """This rank's share of the tokens of the forward in progress, and the exchanges around self-attention."""

    def __init__(self, group: ParallelGroup, num_heads: int) -> None:
        if num_heads % group.world:
            raise ValueError(f"{num_heads} attention heads do not split over {group.world} ranks")
        self.group = group
        self.num_heads = num_heads
        self.local_heads = num_heads // group.world
        self.sizes: list[int] = []

    def scatter_tokens(
        self, residual: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep this rank's contiguous run of tokens of the stream [B, L, dim] and its rows of the RoPE tables."""
        length = residual.shape[1]
        if length < self.group.world:
            raise ValueError(f"{length} tokens cannot be shared by {self.group.world} ranks")
        self.sizes, start, stop = self.group.ranks_of(length)
        return residual[:, start:stop].contiguous(), rope_cos[start:stop], rope_sin[start:stop]

    def gather_tokens(self, out: torch.Tensor) -> torch.Tensor:
        """Every rank's head output [B, L_rank, C] -> the whole sequence [B, L, C] on every rank."""
        return self.group.all_gather(out, 1, self.sizes)

    def attention(
        self,
        attn: SelfAttention,
        q_in: torch.Tensor,
        k_in: torch.Tensor,
        v_in: torch.Tensor,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
    ) -> torch.Tensor:
        """Self-attention of this rank's tokens given their q/k/v projections [B, L_rank, dim]; returns the
        attention output [B, L_rank, dim] before the output projection (SelfAttention.forward applies `o`)."""
        b, length, dim = q_in.shape
        heads, head_dim = attn.num_heads, attn.head_dim
        # Each exchange starts as soon as its tensor exists, so k's norm and RoPE overlap q's transfer.
        q = dispatch.rms_norm_rope(q_in, attn.norm_q.weight, attn.norm_q.eps, rope_cos, rope_sin, heads)
        q_sent = self._send_heads(q)
        k = dispatch.rms_norm_rope(k_in, attn.norm_k.weight, attn.norm_k.eps, rope_cos, rope_sin, heads)
        k_sent = self._send_heads(k)
        v_sent = self._send_heads(v_in.view(b, length, heads, head_dim))
        q_h, k_h, v_h = (self._receive_heads(*sent, b, head_dim) for sent in (q_sent, k_sent, v_sent))
        out = dispatch.dense_attention(q_h, k_h, v_h) if attn.attn_op is None else attn.attn_op(q_h, k_h, v_h)
        return self._to_tokens(out).reshape(b, length, dim)

    def _send_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, dist.Work | None]:
        """Start sending heads [j*H/N, (j+1)*H/N) of this rank's tokens x [B, L_rank, H, D] to rank j."""
        b, length, _, head_dim = x.shape
        world, local = self.group.world, self.local_heads
        send = x.reshape(b, length, world, local, head_dim).permute(2, 0, 1, 3, 4).contiguous().view(-1)
        per_token = b * local * head_dim
        return self.group.all_to_all(
            send, [length * per_token] * world, [size * per_token for size in self.sizes], async_op=True
        )

    def _receive_heads(self, recv: torch.Tensor, work: dist.Work | None, b: int, head_dim: int) -> torch.Tensor:
        """Finish an exchange: all tokens of this rank's heads, [B, H/N, L, D] (strided like the model's views)."""
        if work is not None:
            work.wait()
        if b == 1:  # the received blocks, in rank order, already are the whole sequence: no copy
            return recv.view(1, sum(self.sizes), self.local_heads, head_dim).transpose(1, 2)
        per_token = b * self.local_heads * head_dim
        parts = recv.split([size * per_token for size in self.sizes])
        full = torch.cat(
            [part.view(b, size, self.local_heads, head_dim) for part, size in zip(parts, self.sizes, strict=True)],
            dim=1,
        )
        return full.transpose(1, 2)

    def _to_tokens(self, out: torch.Tensor) -> torch.Tensor:
        """Attention output of this rank's heads over all tokens [B, H/N, L, D] -> all heads of its own tokens
        [B, L_rank, H, D]: tokens of rank j go back to rank j."""
        b, local, _, head_dim = out.shape
        world = self.group.world
        by_token = out.transpose(1, 2)
        send = torch.cat([part.reshape(-1) for part in by_token.split(self.sizes, dim=1)])
        mine = self.sizes[self.group.rank]
        per_token = b * local * head_dim
        recv, work = self.group.all_to_all(send, [size * per_token for size in self.sizes], [mine * per_token] * world)
        if work is not None:
            work.wait()
        return recv.view(world, b, mine, local, head_dim).permute(1, 2, 0, 3, 4).reshape(b, mine, world * local,
                                                                                        head_dim)


@contextmanager
def sequence_parallel(model: WanDiT, group: ParallelGroup) -> Iterator[SequenceShard]:
    """Run `model`'s forwards sequence-parallel over `group` while the block is active. Every rank of the group
    must call the model with the same full input; each returns the same full output."""
    shard = SequenceShard(group, model.cfg.num_heads)
    attentions = [block.self_attn for block in model.blocks]
    model.sequence_parallel = shard
    for attention in attentions:
        attention.sequence_parallel = shard
    try:
        yield shard
    finally:
        model.sequence_parallel = None
        for attention in attentions:
            attention.sequence_parallel = None
