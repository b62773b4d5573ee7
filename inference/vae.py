"""The Wan2.1 video VAE (shared by Wan2.1 and Wan2.2-A14B): causal 3-D convolutions, 4x time and 8x8 space.

Module and parameter names follow the structure of the published `Wan2.1_VAE.pth` exactly, so that file loads
strictly with no renaming (spec section 4). Sequential indices that hold no parameters (activations, padding,
dropout) are kept as placeholders only to keep those indices.

Causality is carried by a `StreamCache`: every causal convolution remembers the last input frames it saw, so a
video can be processed in consecutive time chunks (encode: 1, 4, 4, ... frames; decode: one latent frame at a
time) and give the same result as processing it in one piece. The first frame is special in the temporal
resamplers: it is never mixed with frames before it, which is what lets frame 0 be an image on its own.

Speed (`VAEOptions`, `WanVAE.options`): cuDNN autotuning, channels_last_3d layout (cuDNN's native layout for
bf16 tensor-core convolutions, and per-frame 2-D ops become free views), fewer copies (zero padding done by the
convolution, one context buffer per causal conv instead of pad + cat), all the same math as the reference path;
a Triton RMSNorm+SiLU that writes straight into the next convolution's context buffer, with the conv biases
(the residual blocks' own and those of the convs just before them) added inside it and inside a fused residual add
rather than in passes of their own (fp32 inside, so it differs from the eager bf16 chain by rounding); the
mid-block attention by cuBLAS products around a Triton softmax; and, for the encode, the outputs of repeated input
frames computed once. `REFERENCE_OPTIONS` is the original code path (the benchmarks' baseline and the tests' oracle).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inference.configs import ModelConfig, VAEConfig

# Seed of the random weights used when no checkpoint is given (tiny model, tests).
RANDOM_WEIGHTS_SEED = 20250728
# Frames of left context a kernel-3 causal convolution needs.
_CAUSAL_CONTEXT = 2


@dataclass(frozen=True)
class VAEOptions:
    """How the VAE runs; every field but `fused_norm` and `matmul_attention` keeps the reference math exactly
    (only the choice of convolution algorithm, hence the fp32-accumulation order, may change: for `steady_frames`
    too, as its shorter convs may get other algorithms)."""

    # torch.backends.cudnn.benchmark while encoding/decoding on CUDA: cuDNN times its conv3d algorithms per shape
    # (a few shapes per resolution, so the first call at a new resolution pays the tuning once per process).
    cudnn_benchmark: bool = True
    # Weights and activations in channels_last(_3d): NDHWC is what cuDNN's bf16 implicit-GEMM kernels want, and
    # the per-frame 2-D ops (resample, attention) get their [B*T, C, H, W] input as a view instead of a copy.
    channels_last: bool = True
    # Spatial zero padding inside the convolution and the causal time context assembled in one buffer (instead
    # of torch.cat then F.pad, two full copies of every conv input); temporal upsampling written in place.
    fewer_copies: bool = True
    # Triton RMSNorm + SiLU (fp32 inside, one rounding) written into the following conv's context buffer, and the
    # conv biases added inside it and the fused residual add (PyTorch adds a cuDNN conv's bias in a pass of its
    # own): the residual blocks' own, and those of the encoder's/decoder's first conv and the 2-D resample convs,
    # which the next residual block takes over. Differs from the eager bf16 chain by bf16 rounding, and is closer
    # to fp32 than that chain (bench/README.md). Reference math where Triton can't run.
    fused_norm: bool = True
    # Encode only: where a causal conv's input ends in identical frames (the I2V conditioning video is an image
    # followed by black frames, and each layer's output settles a few frames after the image), the outputs whose
    # whole time window lies in that run are one frame computed once and copied. Exact in real arithmetic (the same
    # window gives the same output); in bf16 as close to fp32 as computing every frame (bench/README.md). Costs one
    # comparison pass over each conv input, so decode (never repeats) leaves it off.
    steady_frames: bool = True
    # The mid-block attention (one head of 384 channels) as two cuBLAS products around a one-pass Triton softmax
    # (bf16/fp16 on CUDA), as accurate as PyTorch's SDPA, whose kernel for that head size is slower.
    matmul_attention: bool = True


# The code path as first written (F.pad + torch.cat, contiguous layout, eager norms, cuDNN heuristics).
REFERENCE_OPTIONS = VAEOptions(
    cudnn_benchmark=False, channels_last=False, fewer_copies=False, fused_norm=False, steady_frames=False,
    matmul_attention=False,
)

# Options of the encode/decode call in progress; submodules called on their own run the reference path.
_ACTIVE: ContextVar[VAEOptions] = ContextVar("vae_options", default=REFERENCE_OPTIONS)


def _options() -> VAEOptions:
    return _ACTIVE.get()


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cudnn.benchmark on for the duration only, so the rest of the process keeps its own setting."""
    if not enabled:
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _memory_format(ndim: int) -> torch.memory_format:
    if not _options().channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def _use_triton(x: torch.Tensor) -> bool:
    # CUDA only: the interpreter's CPU path is for the kernel tests, which ask for it explicitly.
    if not x.is_cuda:
        return False
    try:
        from turbokernels import vae_norms_triton
    except ImportError:  # pragma: no cover
        return False
    return vae_norms_triton.HAVE_TRITON


class StreamCache:
    """State a causal network keeps between time chunks, keyed by the module that owns it.

    A fresh cache means "the video starts here": causal convolutions pad with zeros and temporal resamplers
    treat the first frame of the chunk as the video's first frame.
    """

    def __init__(self) -> None:
        self._state: dict[int, object] = {}

    def get(self, owner: nn.Module) -> object | None:
        return self._state.get(id(owner))

    def set(self, owner: nn.Module, value: object) -> None:
        self._state[id(owner)] = value


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only on the past side in time (2 * padding frames) and symmetrically in space."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.time_context = 2 * pt
        self.spatial_pad = (pw, pw, ph, ph)
        # For the fast path: the convolution zero-pads space itself (same result as F.pad, no copy).
        self.conv_padding = (0, ph, pw)

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        if _options().fewer_copies:
            return self.forward_with_context(x, cache)
        if self.time_context > 0:
            previous = cache.get(self) if cache is not None else None
            if isinstance(previous, torch.Tensor):
                x = torch.cat([previous.to(x.dtype), x], dim=2)
            if cache is not None:
                # Only the last frames of the stream matter to the next chunk; clone so the chunk can be freed.
                cache.set(self, x[:, :, -self.time_context :].clone())
            missing = self.time_context - (previous.shape[2] if isinstance(previous, torch.Tensor) else 0)
            x = F.pad(x, (*self.spatial_pad, max(missing, 0), 0))
        elif any(self.spatial_pad):
            x = F.pad(x, (*self.spatial_pad, 0, 0))
        return super().forward(x)

    def forward_with_context(
        self,
        x: torch.Tensor,
        cache: StreamCache | None = None,
        fill: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
        *,
        bias: bool = True,
    ) -> torch.Tensor:
        """Same result as `forward`: the time context (zeros for frames before the video, then the cached frames)
        and the chunk go into one buffer in the active layout, and the conv pads space itself.

        With `fill`, the buffer's chunk frames are written by fill(x, out) instead of a copy of x: that lets the
        norm before the conv write its output straight into the buffer. With bias=False the output lacks the conv's
        bias, for a caller that adds it in a pass it makes anyway (cuDNN convs add it in a pass of their own).
        """
        tc = self.time_context
        conv_bias = self.bias if bias else None
        if tc == 0:
            if fill is not None:
                out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x.ndim))
                fill(x, out)
                x = out
            return F.conv3d(x, self.weight, conv_bias, self.stride, self.conv_padding, self.dilation, self.groups)
        previous = cache.get(self) if cache is not None else None
        have = previous.shape[2] if isinstance(previous, torch.Tensor) else 0
        missing = max(tc - have, 0)
        front = missing + have
        b, c, t, h, w = x.shape
        buf = torch.empty((b, c, front + t, h, w), dtype=x.dtype, device=x.device, memory_format=_memory_format(5))
        if missing:
            buf[:, :, :missing].zero_()
        if have:
            buf[:, :, missing:front].copy_(previous)
        if fill is None:
            buf[:, :, front:].copy_(x)
        else:
            fill(x, buf[:, :, front:])
        if cache is not None:
            # Zero frames may enter the cache when the stream is still shorter than the context: they are the
            # same zeros the reference pads with next time, so the next chunk sees the same input.
            cache.set(self, buf[:, :, -tc:].clone())
        if _options().steady_frames and self.stride[0] == 1 and self.kernel_size[0] == tc + 1 and t > 1:
            return self._conv_steady(buf, t, conv_bias)
        return F.conv3d(buf, self.weight, conv_bias, self.stride, self.conv_padding, self.dilation, self.groups)

    def _conv_steady(self, buf: torch.Tensor, t: int, bias: torch.Tensor | None) -> torch.Tensor:
        """conv3d(buf) for t output frames, computing once the outputs whose window lies in buf's run of identical
        last frames: output i reads buf frames i..i+tc, so every i >= s (the run's first frame) has the same window."""
        from turbokernels import vae_norms_triton

        if _use_triton(buf):
            differs = vae_norms_triton.differing_frames(buf)
        else:
            differs = vae_norms_triton.differing_frames_reference(buf)
        changed = differs.nonzero()  # the one host sync of this conv
        s = int(changed[-1].item()) + 1 if changed.numel() else 0
        if s >= t - 1:  # at most the last output is in the run: nothing to save
            return F.conv3d(buf, self.weight, bias, self.stride, self.conv_padding, self.dilation, self.groups)
        tc = self.time_context
        head = F.conv3d(buf[:, :, : s + tc + 1], self.weight, bias, self.stride, self.conv_padding,
                        self.dilation, self.groups)  # fmt: skip
        b, c, _, h, w = head.shape
        out = torch.empty((b, c, t, h, w), dtype=head.dtype, device=head.device, memory_format=_memory_format(5))
        out[:, :, : s + 1].copy_(head)
        _repeat_frame(out, s)
        return out


def _repeat_frame(x: torch.Tensor, s: int) -> torch.Tensor:
    """x[:, :, s+1:] <- x[:, :, s], by doubling copies: each copies a run of whole frames, which in
    channels_last_3d (batch 1) is one dense block and goes as a memcpy, where one broadcast copy of frame s takes
    PyTorch's strided, non-vectorised copy kernel."""
    t, done = x.shape[2], s + 1
    while done < t:
        n = min(done - s, t - done)
        x[:, :, done : done + n].copy_(x[:, :, s : s + n])
        done += n
    return x


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(dim) and a learned per-channel gain (`gamma`)."""

    def __init__(self, dim: int, *, spatial_dims: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma

    def silu_into(self, x: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """out <- SiLU(self(x + bias)) in one fused pass (Triton), or fp32 reference math where Triton can't run;
        `bias` is the per-channel bias of the conv that made x and left it out."""
        from turbokernels import vae_norms_triton

        if _use_triton(x):
            vae_norms_triton.rms_norm_silu(x, self.gamma.view(-1), self.scale, out=out, bias=bias)
        else:
            out.copy_(vae_norms_triton.rms_norm_silu_reference(x, self.gamma.view(-1), self.scale, bias=bias))


def _norm_silu_conv(norm: RMSNorm, conv: CausalConv3d, x: torch.Tensor, cache: StreamCache | None) -> torch.Tensor:
    """conv(SiLU(norm(x))), fused when the options say so."""
    if _options().fused_norm:
        return conv.forward_with_context(x, cache, fill=norm.silu_into)
    return conv(F.silu(norm(x)), cache)


def _per_frame(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of a [B, C, T, H, W] video."""
    b, _, t, _, _ = x.shape
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class _Upsample2x(nn.Module):
    """Nearest 2x spatial upsampling, written as a broadcast copy so it works in any dtype without a float copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if _options().channels_last:
            # The same copy done in NHWC order, so a channels_last input gives a channels_last output (the
            # reference order would write NCHW and the next conv would convert it back).
            y = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, 2, w, 2, c)
            return y.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
        return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Indices 0..6 match the checkpoint: norm, act, conv, norm, act, dropout (none at inference), conv.
        self.residual = nn.Sequential(
            RMSNorm(in_dim, spatial_dims=3),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, spatial_dims=3),
            nn.SiLU(),
            nn.Identity(),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(
        self, x: torch.Tensor, cache: StreamCache | None = None, *, in_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`in_bias` (fused path only): a per-channel bias that x still lacks, left out by the conv that made it."""
        opts = _options()
        if opts.fused_norm:
            return self._forward_fused(x, cache, in_bias)
        if in_bias is not None:
            raise ValueError("only the fused path takes the previous conv's bias")
        if opts.fewer_copies:
            norm1, _, conv1, norm2, _, _, conv2 = self.residual
            skip = self.shortcut(x, cache) if isinstance(self.shortcut, CausalConv3d) else x
            y = _norm_silu_conv(norm1, conv1, x, cache)
            y = _norm_silu_conv(norm2, conv2, y, cache)
            return y.add_(skip)  # y is this block's own fresh conv output
        skip = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + skip

    def _forward_fused(self, x: torch.Tensor, cache: StreamCache | None, in_bias: torch.Tensor | None) -> torch.Tensor:
        """The fused path: the norms write into the convs' buffers, and no conv adds its bias in a pass of its own
        over its output (PyTorch adds a cuDNN conv's bias separately): the first conv's bias goes into the second
        norm, the second conv's (and the shortcut's) into the residual add. The input's missing bias (`in_bias`)
        goes into the first norm and, through the skip path, into the residual add: as is for an identity
        shortcut, as W @ in_bias for a 1x1 shortcut conv (conv(x + b) = conv(x) + W b, no padding to break it)."""
        from turbokernels import vae_norms_triton

        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        out_bias = conv2.bias.float()
        if isinstance(self.shortcut, CausalConv3d):
            skip = self.shortcut.forward_with_context(x, cache, bias=False)
            out_bias = out_bias + self.shortcut.bias.float()
            if in_bias is not None:
                out_bias = out_bias + self.shortcut.weight.float().flatten(1) @ in_bias.float()
        else:
            skip = x
            if in_bias is not None:
                out_bias = out_bias + in_bias.float()
        y = conv1.forward_with_context(x, cache, fill=functools.partial(norm1.silu_into, bias=in_bias), bias=False)
        y = conv2.forward_with_context(y, cache, fill=functools.partial(norm2.silu_into, bias=conv1.bias), bias=False)
        if _use_triton(y):
            return vae_norms_triton.add_bias_residual_(y, skip, out_bias)
        return vae_norms_triton.add_bias_residual_reference(y, skip, out_bias)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        # The block starts as the identity, as upstream initialises it.
        nn.init.zeros_(self.proj.weight)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 3 * c, h * w).transpose(1, 2).unsqueeze(1)
        q, k, v = qkv.chunk(3, dim=-1)
        if _options().matmul_attention and x.dtype in (torch.bfloat16, torch.float16) and _use_triton(x):
            out = _attention_by_matmuls(q.squeeze(1), k.squeeze(1), v.squeeze(1)).unsqueeze(1)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.squeeze(1).transpose(1, 2).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        return x + _per_frame(self._attend, x)


def _attention_by_matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for [N, L, d] bf16/fp16, one frame at a time: the scores in fp32 (cuBLAS, fp32
    accumulation and output), the softmax in one Triton pass that writes the probabilities as hi + lo in q's dtype,
    then hi v + lo v in fp32, rounded once. Probabilities rounded to bf16 alone would add error of the size of the
    output's own rounding; with the second term the result is as close to fp32 as PyTorch's SDPA. The head dim
    (384) is beyond PyTorch's flash and cuDNN kernels, and its memory-efficient kernel runs it at a fraction of
    the matrix units' rate."""
    from turbokernels import vae_norms_triton

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    scale = q.shape[-1] ** -0.5
    for i in range(q.shape[0]):
        scores = torch.bmm(q[i : i + 1], k[i : i + 1].transpose(1, 2), out_dtype=torch.float32)
        hi, lo = vae_norms_triton.scaled_softmax_split(scores, scale, q.dtype)
        del scores
        o = torch.bmm(hi, v[i : i + 1], out_dtype=torch.float32)
        o += torch.bmm(lo, v[i : i + 1], out_dtype=torch.float32)
        out[i : i + 1].copy_(o)
    return out


class Resample(nn.Module):
    """Spatial 2x down/up sampling per frame, optionally with 2x temporal down/up sampling by a causal time conv.

    Temporal rules (upstream's, kept so weights mean the same thing): downsampling keeps the video's first frame
    as is and turns every later pair of frames into one, looking back one extra frame; upsampling keeps the first
    frame as is and turns every later frame into two, looking back two frames (never at the first frame).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            # Pad right/bottom only, then a stride-2 conv: output pixel i sees input pixels 2i..2i+2.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, cache if cache is not None else StreamCache())
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._time_down(x, cache if cache is not None else StreamCache())
        return x

    def forward_unbiased(
        self, x: torch.Tensor, cache: StreamCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """forward for the fused path: the output without the 2-D conv's bias, and that bias (for the next
        residual block to add inside its kernels). downsample3d's time conv follows the 2-D conv and leaves the
        first frame alone, so one bias per channel can't stand for it: complete output, None."""
        if self.mode == "downsample3d":
            return self(x, cache), None
        if self.mode == "upsample3d":
            x = self._time_up(x, cache if cache is not None else StreamCache())
        prepare, conv = self.resample
        y = _per_frame(lambda f: F.conv2d(prepare(f), conv.weight, None, conv.stride, conv.padding), x)
        return y, conv.bias

    def _time_up(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        started = cache.get(self) is not None
        cache.set(self, True)
        head, rest = (x[:, :, :0], x) if started else (x[:, :, :1], x[:, :, 1:])
        if rest.shape[2] == 0:
            return head
        if _options().fewer_copies:
            # One pass into the output (frame 2i+s of the rest = channel half s of y's frame i) that also adds the
            # conv's bias, instead of a bias pass, a reshape copy and a cat copy; keeps the active layout. The
            # same bf16 sum PyTorch's own bias pass makes.
            y = self.time_conv.forward_with_context(rest, cache, bias=False)  # [B, 2C, T, H, W]
            b, c2, t, h, w = y.shape
            n = head.shape[2]
            out = torch.empty((b, c2 // 2, n + 2 * t, h, w), dtype=y.dtype, device=y.device,
                              memory_format=_memory_format(5))  # fmt: skip
            out[:, :, :n].copy_(head)
            bias = self.time_conv.bias.view(2, c2 // 2).t().reshape(1, c2 // 2, 1, 2, 1, 1)
            torch.add(y.unflatten(1, (2, c2 // 2)).permute(0, 2, 3, 1, 4, 5), bias,
                      out=out[:, :, n:].unflatten(2, (t, 2)))  # fmt: skip
            return out
        y = self.time_conv(rest, cache)  # [B, 2C, T, H, W]: channel halves are the two output frames
        b, c2, t, h, w = y.shape
        y = y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        return torch.cat([head, y], dim=2)

    def _time_down(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        previous = cache.get(self)
        if isinstance(previous, torch.Tensor):
            head, context = x[:, :, :0], torch.cat([previous.to(x.dtype), x], dim=2)
        else:
            head, context = x[:, :, :1], x
        if context.shape[2] % 2 == 0:
            raise ValueError(
                f"temporal downsampling needs 1 + 2k frames in the first chunk and 2k in later ones; "
                f"got {x.shape[2]} frames"
            )
        cache.set(self, x[:, :, -1:].clone())
        if context.shape[2] < 3:
            return head
        return torch.cat([head, self.time_conv(context)], dim=2)


def _run(
    layers: nn.Module, x: torch.Tensor, cache: StreamCache | None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The layers in order. On the fused path the convs outside residual blocks (`bias`: the one before the first
    layer; the resamplers' 2-D convs) leave their bias to the next residual block, which adds it inside its kernels
    instead of a pass of its own over a full-resolution map."""
    fused = _options().fused_norm
    for layer in layers:
        if isinstance(layer, ResidualBlock):
            x, bias = layer(x, cache, in_bias=bias), None
            continue
        if bias is not None:
            raise ValueError(f"a conv's bias was left for a residual block, but {type(layer).__name__} comes next")
        if isinstance(layer, Resample) and fused:
            x, bias = layer.forward_unbiased(x, cache)
        elif isinstance(layer, (AttentionBlock, Resample, CausalConv3d)):
            x = layer(x, cache)
        else:
            x = layer(x)
    if bias is not None:
        raise ValueError("a conv's bias was left for a residual block, but the layers ended")
    return x


def _conv_leaving_bias(
    conv: CausalConv3d, x: torch.Tensor, cache: StreamCache | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """conv(x) and None, or on the fused path conv(x) without its bias and that bias (for `_run`)."""
    if _options().fused_norm:
        return conv.forward_with_context(x, cache, bias=False), conv.bias
    return conv(x, cache), None


def _run_head(head: nn.Module, x: torch.Tensor, cache: StreamCache | None) -> torch.Tensor:
    """The encoder's and decoder's head: RMSNorm, SiLU, causal conv."""
    norm, _, conv = head
    return _norm_silu_conv(norm, conv, x, cache)


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig, out_channels: int) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[level] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        top = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(top, top), AttentionBlock(top), ResidualBlock(top, top))
        self.head = nn.Sequential(
            RMSNorm(top, spatial_dims=3), nn.SiLU(), CausalConv3d(top, out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        x, bias = _conv_leaving_bias(self.conv1, x, cache)
        x = _run(self.downsamples, x, cache, bias)
        x = _run(self.middle, x, cache)
        return _run_head(self.head, x, cache)


class Decoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mults = tuple(reversed(cfg.dim_mult))
        dims = [cfg.base_dim * m for m in (mults[0], *mults)]
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0])
        )
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(itertools.pairwise(dims)):
            # Every upsampler halves the channels, so levels after the first start from half the width.
            if level > 0:
                in_dim //= 2
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[level] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1], spatial_dims=3), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        x, bias = _conv_leaving_bias(self.conv1, x, cache)
        x = _run(self.middle, x, cache, bias)
        x = _run(self.upsamples, x, cache)
        return _run_head(self.head, x, cache)


class WanVAE(nn.Module):
    """Wan2.1 VAE. `encode` / `decode` work on normalised latents z = (mu - mean) / std (spec section 4)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        z = config.z_dim
        self.encoder = Encoder3d(config, out_channels=2 * z)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(config)
        # Not module state: how encode/decode run (see VAEOptions); set REFERENCE_OPTIONS for the original path.
        self.options = VAEOptions()

    @contextlib.contextmanager
    def _running(self, *, encoding: bool) -> Iterator[None]:
        """Activate self.options for one encode/decode: weight layout, cuDNN autotuning, the options themselves."""
        opts = self.options if encoding else dataclasses.replace(self.options, steady_frames=False)
        self._set_weight_layout(opts.channels_last)
        token = _ACTIVE.set(opts)
        try:
            with _cudnn_benchmark(opts.cudnn_benchmark and self.device.type == "cuda"):
                yield
        finally:
            _ACTIVE.reset(token)

    def _set_weight_layout(self, channels_last: bool) -> None:
        """Conv weights in channels_last(_3d) or contiguous (in place; the values and key names are unchanged).
        Both ways, so switching options back really runs the reference layout."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                w = module.weight
                fmt = torch.contiguous_format
                if channels_last:
                    fmt = torch.channels_last_3d if w.ndim == 5 else torch.channels_last
                if not w.is_contiguous(memory_format=fmt):
                    w.data = w.data.contiguous(memory_format=fmt)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latent_mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.config.latent_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def latent_frames(self, num_frames: int) -> int:
        stride = self.config.temporal_stride
        if num_frames < 1 or (num_frames - 1) % stride:
            raise ValueError(f"the VAE needs {stride}k+1 frames, got {num_frames}")
        return 1 + (num_frames - 1) // stride

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"encode expects a video [B, 3, F, H, W], got shape {tuple(video.shape)}")
        space = self.config.spatial_stride
        self.latent_frames(video.shape[2])  # validates 4k+1
        if video.shape[3] % space or video.shape[4] % space:
            raise ValueError(f"height and width must be multiples of {space}, got {video.shape[3]}x{video.shape[4]}")

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"decode expects latents [B, {self.config.z_dim}, T, h, w], got shape {tuple(z.shape)}")

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, chunk_latents: int | None = 1,
               on_chunk: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1], F = 4k+1, H and W multiples of 8 -> z [B, 16, 1 + (F-1)/4, H/8, W/8].

        The video goes through the encoder in causal chunks: the first frame alone, then `chunk_latents` latent
        frames' worth (4 frames each) at a time; None runs the whole video as one chunk (same result, more memory).
        `on_chunk(frames_done, frames)` is called after each chunk (progress for long videos).
        """
        self._check_video(video)
        video = video.to(device=self.device, dtype=self.dtype)
        return self._encode_chunks(video, self.encoder, chunk_latents=chunk_latents, on_chunk=on_chunk)

    def _encode_chunks(self, video: torch.Tensor, encoder: Callable[[torch.Tensor, StreamCache], torch.Tensor], *,
                       chunk_latents: int | None, on_chunk: Callable[[int, int], None] | None) -> torch.Tensor:
        """encode's chunk loop on a checked video already on the device; `encoder` is the network (this model's
        encoder, or a parallel rank's slab encoder, inference.parallel.vae). Returns the normalised latents."""
        frames, stride = video.shape[2], self.config.temporal_stride
        bounds = [0, frames] if chunk_latents is None else [0, *range(1, frames, stride * max(1, chunk_latents)), frames]
        cache = StreamCache()
        with self._running(encoding=True):
            parts = []
            for a, b in itertools.pairwise(bounds):
                parts.append(encoder(video[:, :, a:b], cache))
                if on_chunk is not None:
                    on_chunk(b, frames)
            mu = self.conv1(torch.cat(parts, dim=2)).chunk(2, dim=1)[0]
        mean, std = self._latent_stats(mu)
        return ((mu - mean) / std).contiguous()

    @torch.no_grad()
    def decode(
        self,
        z: torch.Tensor,
        *,
        chunk_latents: int | None = 1,
        on_chunk: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """z [B, 16, T, h, w] (normalised) -> video [B, 3, 1 + 4(T-1), 8h, 8w] clamped to [-1, 1].

        Decodes `chunk_latents` latent frames at a time (None: all at once), carrying the causal caches.
        `on_chunk(video_chunk)` gets each chunk's frames [B, 3, n, 8h, 8w] (clamped) as soon as they exist, in
        order, so a caller can move them off the GPU or encode them while later chunks decode; the chunks
        concatenate to the returned video.
        """
        self._check_latents(z)
        z = z.to(device=self.device, dtype=self.dtype)
        return self._decode_chunks(z, self.decoder, chunk_latents=chunk_latents, on_chunk=on_chunk)

    def _decode_chunks(
        self,
        z: torch.Tensor,
        decoder: Callable[[torch.Tensor, StreamCache], torch.Tensor],
        *,
        chunk_latents: int | None,
        on_chunk: Callable[[torch.Tensor], None] | None,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """decode's chunk loop on checked latents already on the device; `decoder` is the network and `gather`
        (a parallel rank's) turns each clamped chunk into the whole frames before on_chunk sees it."""
        mean, std = self._latent_stats(z)
        step = z.shape[2] if chunk_latents is None else max(1, chunk_latents)
        cache = StreamCache()
        with self._running(encoding=False):
            x = self.conv2(z * std + mean)
            parts: list[torch.Tensor] = []
            for i in range(0, x.shape[2], step):
                # Clamped per chunk (not after the concatenation) so on_chunk sees the values decode returns.
                part = decoder(x[:, :, i : i + step], cache).clamp(-1.0, 1.0)
                if gather is not None:
                    part = gather(part)
                if on_chunk is not None:
                    on_chunk(part)
                parts.append(part)
        # Contiguous whatever the working layout, as callers have always got it.
        return torch.cat(parts, dim=2).contiguous()


def build_vae(config: VAEConfig, *, seed: int = RANDOM_WEIGHTS_SEED) -> WanVAE:
    """A VAE with seeded random weights on the CPU in fp32 (the same weights on every machine)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanVAE(config)


def load_vae(
    config: ModelConfig,
    path: Path | None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WanVAE:
    """The model's VAE from `Wan2.1_VAE.pth` (strict, official key names), or seeded random weights for None."""
    if path is None:
        vae = build_vae(config.vae)
    else:
        from inference.checkpoint import load_into, load_state_dict_file

        # Built on meta: load_into assigns the checkpoint's tensors, so the weights exist once in memory.
        with torch.device("meta"):
            vae = WanVAE(config.vae)
        load_into(vae, load_state_dict_file(Path(path)), what=f"VAE {path}", strict=True)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
