"""The one place the model calls its ops. Each function has the signature of its twin in kernels.reference.

Backend choice: `set_backend(...)` or the env var TURBO_KERNELS:
- "reference": always the pure-PyTorch reference;
- "kernel": always the fast kernel (an error if the op has none on this device);
- "auto" (default): the fast kernel where one exists for the tensors' device, else the reference.
No fast kernels are registered yet, so "auto" is the reference everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from kernels import reference

BACKENDS = ("auto", "reference", "kernel")
_ENV_VAR = "TURBO_KERNELS"
_backend: str | None = None  # None: read the env var on each call, so tests can set it late

# op name -> fast implementation with the reference's signature (to be filled by the kernels' module).
_KERNELS: dict[str, Callable[..., Any]] = {}


def set_backend(name: str | None) -> None:
    """Pick the backend for every op; None goes back to the TURBO_KERNELS env var (default "auto")."""
    global _backend
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _backend = name


def get_backend() -> str:
    name = _backend if _backend is not None else os.environ.get(_ENV_VAR, "auto")
    if name not in BACKENDS:
        raise ValueError(f"{_ENV_VAR}={name!r} is not a kernel backend; choose one of {', '.join(BACKENDS)}")
    return name


def _pick(op: str, tensor: torch.Tensor) -> Callable[..., Any]:
    backend = get_backend()
    if backend == "reference":
        return getattr(reference, op)
    kernel = _KERNELS.get(op)
    if kernel is not None and tensor.is_cuda:
        return kernel
    if backend == "kernel":
        raise RuntimeError(f"no fast kernel for {op} on device {tensor.device} (backend 'kernel' was requested)")
    return getattr(reference, op)


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
    return _pick("sla_attention", q)(q, k, v, proj_l_weight, proj_l_bias, topk, block_q, block_k)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _pick("dense_attention", q)(q, k, v)


def int8_linear(
    x: torch.Tensor, int8_weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return _pick("int8_linear", x)(x, int8_weight, scale, bias)


def quantize_int8_blockwise(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    return _pick("quantize_int8_blockwise", w)(w, block)


def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return _pick("layer_norm_modulate", x)(x, shift, scale, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _pick("rms_norm", x)(x, weight, eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _pick("apply_rope", x)(x, cos, sin)


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Tables are built once per shape; the reference is already cheap, so there is no kernel for this.
    return reference.rope_tables(grid, head_dim, theta)
