"""Start N local processes that form one group (torch.multiprocessing, no torchrun): for the tests, the benchmark
and anything else that wants a group on this host without the worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from inference.parallel.group import ParallelGroup, free_port, init_process_group


def rank_device(kind: str, rank: int) -> torch.device:
    """Rank r's device: GPU r of those visible for "cuda", the CPU otherwise."""
    return torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, kind: str, timed: bool, args: tuple) -> None:
    device = rank_device(kind, rank)
    init_process_group(rank, world, port, device)
    try:
        fn(ParallelGroup(device, timed=timed), *args)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world: int, *args: Any, device: str = "cpu", timed: bool = False) -> None:
    """Run fn(group, *args) in `world` new processes that form one group; raises if any of them fails.
    `fn` and `args` must be picklable (a module-level function)."""
    if device == "cuda" and torch.cuda.device_count() < world:
        raise RuntimeError(f"{world} ranks need {world} GPUs; {torch.cuda.device_count()} are visible")
    mp.spawn(_entry, args=(fn, world, free_port(), device, timed, args), nprocs=world, join=True)
