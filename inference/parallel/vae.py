"""The Wan VAE split spatially over the ranks of a group: each rank encodes and decodes one horizontal slab.

The latent rows are shared out as evenly as possible (at least one each); every level of the network splits at the
same places scaled by its stride, so the stride-2 downsamplers always start a slab on an even row. The only layers
that look across rows are the 3x3 convolutions, the resamplers and the per-frame attention of the middle blocks:

- a convolution gets its neighbours' edge rows as a halo (`padding` rows from each side; the global top and bottom
  keep the zero padding the convolution adds) and the output rows the halo produced are cropped;
- a downsampler (pad bottom, stride 2) needs only the first row of the slab below;
- an upsampler gets one row from each neighbour before the 2x nearest upsampling and crops two after its conv;
- attention gathers every rank's keys and values, and attends with the slab's own queries.

The causal time caches are per rank and hold the rank's (halo-extended) slab, so chunked decoding works as on one
GPU. The result equals the one-process result up to the order of floating-point sums. Decoded chunks are gathered
on every rank (the pipeline's code after decode is then the same on every rank; rank 0 streams them to the mp4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from inference.configs import VAEConfig
from inference.parallel.group import ParallelGroup
from inference.vae import (
    AttentionBlock,
    CausalConv3d,
    Resample,
    ResidualBlock,
    RMSNorm,
    StreamCache,
    WanVAE,
    _norm_silu_conv,
    _per_frame,
)

_ROWS = 3  # the height dim of [B, C, T, H, W]


def _crop_rows(x: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    return x.narrow(_ROWS, top, x.shape[_ROWS] - top - bottom)


class ParallelVAE:
    """`WanVAE.encode` / `decode` with the same arguments and results, run by every rank of `group` together."""

    def __init__(self, vae: WanVAE, group: ParallelGroup) -> None:
        self.module = vae
        self.group = group
        self._latent_sizes: list[int] = []

    @property
    def config(self) -> VAEConfig:
        return self.module.config

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    @property
    def device(self) -> torch.device:
        return self.module.device

    # -- the split and the halos ------------------------------------------------------------------------------

    def _split(self, latent_rows: int) -> tuple[int, int]:
        if latent_rows < self.group.world:
            raise ValueError(f"{latent_rows} latent rows cannot be split over {self.group.world} ranks")
        self._latent_sizes, start, stop = self.group.ranks_of(latent_rows)
        return start, stop

    def _sizes_like(self, x: torch.Tensor) -> list[int]:
        """Every rank's row count at the level of `x` (this rank's slab scaled like its latent rows)."""
        mine = self._latent_sizes[self.group.rank]
        scale = x.shape[_ROWS] // mine
        if scale * mine != x.shape[_ROWS]:
            raise RuntimeError(f"a slab of {x.shape[_ROWS]} rows is not a multiple of its {mine} latent rows")
        return [size * scale for size in self._latent_sizes]

    def _halo(self, x: torch.Tensor, above: int, below: int) -> tuple[torch.Tensor, int, int]:
        """x with `above` rows of the previous rank's slab on top and `below` of the next one's underneath (none at
        the video's own top and bottom). Returns the extended x and the rows actually added on each side."""
        need = max(above, below)
        if need == 0:
            return x, 0, 0
        if x.shape[_ROWS] < need:
            raise RuntimeError(f"a slab of {x.shape[_ROWS]} rows is thinner than its {need}-row halo")
        edges = torch.cat([x.narrow(_ROWS, 0, need), x.narrow(_ROWS, x.shape[_ROWS] - need, need)], dim=_ROWS)
        gathered = self.group.all_gather(edges, _ROWS, [2 * need] * self.group.world).split(2 * need, dim=_ROWS)
        rank, world = self.group.rank, self.group.world
        parts = [x]
        top = above if rank > 0 else 0
        bottom = below if rank < world - 1 else 0
        if top:
            parts.insert(0, gathered[rank - 1].narrow(_ROWS, 2 * need - top, top))
        if bottom:
            parts.append(gathered[rank + 1].narrow(_ROWS, 0, bottom))
        return (torch.cat(parts, dim=_ROWS) if len(parts) > 1 else x), top, bottom

    # -- layers -----------------------------------------------------------------------------------------------

    def _conv(self, conv: CausalConv3d, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        pad = conv.spatial_pad[2]
        if pad == 0:
            return conv(x, cache)
        x, top, bottom = self._halo(x, pad, pad)
        return _crop_rows(conv(x, cache), top, bottom)

    def _norm_silu_conv(self, norm: RMSNorm, conv: CausalConv3d, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        pad = conv.spatial_pad[2]
        x, top, bottom = self._halo(x, pad, pad)  # the norm is per pixel: the halo can go in before it
        return _crop_rows(_norm_silu_conv(norm, conv, x, cache), top, bottom)

    def _residual(self, block: ResidualBlock, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = block.residual
        skip = block.shortcut(x, cache) if isinstance(block.shortcut, CausalConv3d) else x
        y = self._norm_silu_conv(norm1, conv1, x, cache)
        y = self._norm_silu_conv(norm2, conv2, y, cache)
        return y + skip

    def _attention(self, block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
        """Per frame: this slab's queries against the keys and values of the whole frame."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).flatten(0, 1)
        n = frames.shape[0]
        q, k, v = block.to_qkv(block.norm(frames)).chunk(3, dim=1)
        sizes = self._sizes_like(x)
        k, v = (self.group.all_gather(part.contiguous(), 2, sizes) for part in (k, v))
        rows = k.shape[2]

        def tokens(part: torch.Tensor, height: int) -> torch.Tensor:
            return part.reshape(n, c, height * w).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(q, h), tokens(k, rows), tokens(v, rows))
        out = block.proj(out.squeeze(1).transpose(1, 2).reshape(n, c, h, w))
        return x + out.unflatten(0, (b, t)).transpose(1, 2)

    def _resample(self, block: Resample, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        if block.mode == "upsample3d":
            x = block._time_up(x, cache)  # per pixel
        if block.mode.startswith("upsample"):
            x, top, bottom = self._halo(x, 1, 1)
            x = _crop_rows(_per_frame(block.resample, x), 2 * top, 2 * bottom)
        else:
            # Zero-pad bottom then stride 2: output row i reads input rows 2i..2i+2, one row into the next slab.
            x, _, _ = self._halo(x, 0, 1)
            x = _per_frame(block.resample, x)
        if block.mode == "downsample3d":
            x = block._time_down(x, cache)  # per pixel
        return x

    def _run(self, layers: nn.Module, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        for layer in layers:
            if isinstance(layer, ResidualBlock):
                x = self._residual(layer, x, cache)
            elif isinstance(layer, AttentionBlock):
                x = self._attention(layer, x)
            elif isinstance(layer, Resample):
                x = self._resample(layer, x, cache)
            elif isinstance(layer, CausalConv3d):
                x = self._conv(layer, x, cache)
            else:
                x = layer(x)
        return x

    def _encoder(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        encoder = self.module.encoder
        x = self._conv(encoder.conv1, x, cache)
        x = self._run(encoder.downsamples, x, cache)
        x = self._run(encoder.middle, x, cache)
        norm, _, conv = encoder.head
        return self._norm_silu_conv(norm, conv, x, cache)

    def _decoder(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        decoder = self.module.decoder
        x = self._conv(decoder.conv1, x, cache)
        x = self._run(decoder.middle, x, cache)
        x = self._run(decoder.upsamples, x, cache)
        norm, _, conv = decoder.head
        return self._norm_silu_conv(norm, conv, x, cache)

    # -- WanVAE's interface ------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, chunk_latents: int | None = 1,
               on_chunk: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """WanVAE.encode of the same full video on every rank; every rank returns the full latents.
        `on_chunk(frames_done, frames)` after each chunk, as WanVAE.encode."""
        vae = self.module
        vae._check_video(video)
        space = self.config.spatial_stride
        start, stop = self._split(video.shape[3] // space)
        video = video[:, :, :, start * space : stop * space].to(device=self.device, dtype=self.dtype)
        z = vae._encode_chunks(video, self._encoder, chunk_latents=chunk_latents, on_chunk=on_chunk)
        return self.group.all_gather(z, _ROWS, self._latent_sizes)

    @torch.no_grad()
    def decode(
        self,
        z: torch.Tensor,
        *,
        chunk_latents: int | None = 1,
        on_chunk: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """WanVAE.decode of the same full latents on every rank; each chunk is gathered, so every rank sees the
        whole frames (in `on_chunk` and in the returned video)."""
        vae = self.module
        vae._check_latents(z)
        start, stop = self._split(z.shape[_ROWS])
        z = z[:, :, :, start:stop].to(device=self.device, dtype=self.dtype)
        pixel_sizes = [size * self.config.spatial_stride for size in self._latent_sizes]
        return vae._decode_chunks(z, self._decoder, chunk_latents=chunk_latents, on_chunk=on_chunk,
                                  gather=lambda slab: self.group.all_gather(slab, _ROWS, pixel_sizes))  # fmt: skip
