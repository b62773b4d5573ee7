"""The process group that runs one job, and the few collectives the parallel DiT, VAE and pipeline need.

Sizes that do not divide by the number of ranks are split as evenly as possible (the first ranks get one more);
collectives that need equal shapes pad to the largest part and trim after.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


def split_sizes(total: int, parts: int) -> list[int]:
    """`total` items in `parts` contiguous parts, as even as possible, larger parts first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def free_port() -> int:
    """A TCP port free on this host now (for a group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(
    rank: int, world: int, port: int, device: torch.device, *, host: str = "127.0.0.1", timeout_s: float = 600.0
) -> None:
    """Join the group of `world` processes that meet at host:port: NCCL for CUDA devices, gloo for the CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a dead peer raises instead of hanging
    dist.init_process_group(
        backend=backend_for(device),
        init_method=f"tcp://{host}:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


@dataclass
class CommStats:
    """Collectives issued and, when the group is `timed`, the wall seconds spent in them (device synchronized)."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"comm_calls": self.calls, "comm_mib": self.bytes / 2**20, "comm_s": self.seconds,
                **{f"comm_{kind}_s": secs for kind, secs in self.by_kind.items()}}


class ParallelGroup:
    """The ranks that share one job. `timed` synchronizes the device around every collective to measure its time
    (for benchmarks: it also stops communication from overlapping compute)."""

    def __init__(
        self, device: torch.device, process_group: dist.ProcessGroup | None = None, *, timed: bool = False
    ) -> None:
        self.device = device
        self.pg = process_group
        self.rank = dist.get_rank(process_group)
        self.world = dist.get_world_size(process_group)
        self.timed = timed
        self.stats = CommStats()

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def ranks_of(self, total: int) -> tuple[list[int], int, int]:
        """(sizes of every rank, start, stop) of this rank's part of `total` contiguous items."""
        sizes = split_sizes(total, self.world)
        start = sum(sizes[: self.rank])
        return sizes, start, start + sizes[self.rank]

    @contextmanager
    def _collective(self, kind: str, nbytes: int) -> Iterator[None]:
        self.stats.calls += 1
        self.stats.bytes += nbytes
        if not self.timed:
            yield
            return
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        seconds = time.perf_counter() - start
        self.stats.seconds += seconds
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0.0) + seconds

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_stats(self) -> None:
        self.stats = CommStats()

    # -- collectives ------------------------------------------------------------------------------------------

    def all_to_all(
        self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int], *, async_op: bool = False
    ) -> tuple[torch.Tensor, dist.Work | None]:
        """1-D all-to-all: `send_counts[j]` elements of `send` go to rank j, `recv_counts[i]` arrive from rank i
        (in rank order). With `async_op` the returned work must be waited on before the result is read."""
        recv = torch.empty(sum(recv_counts), dtype=send.dtype, device=send.device)
        with self._collective("all_to_all", send.numel() * send.element_size()):
            work = dist.all_to_all_single(
                recv, send, output_split_sizes=recv_counts, input_split_sizes=send_counts, group=self.pg,
                async_op=async_op and not self.timed,
            )
        return recv, work

    def all_gather(self, x: torch.Tensor, dim: int, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's `x` along `dim` in rank order; rank i's part has sizes[i] entries there."""
        padded = self._padded(x, dim, sizes)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        with self._collective("all_gather", padded.numel() * padded.element_size()):
            dist.all_gather(parts, padded, group=self.pg)
        return _joined(parts, dim, sizes)

    def gather_to_first(self, x: torch.Tensor, dim: int, sizes: list[int]) -> torch.Tensor | None:
        """Like all_gather, but only rank 0 receives the result (others get None)."""
        padded = self._padded(x, dim, sizes)
        parts = [torch.empty_like(padded) for _ in range(self.world)] if self.is_first else None
        with self._collective("gather", padded.numel() * padded.element_size()):
            dist.gather(padded, parts, dst=self._global(0), group=self.pg)
        return None if parts is None else _joined(parts, dim, sizes)

    def _padded(self, x: torch.Tensor, dim: int, sizes: list[int]) -> torch.Tensor:
        """This rank's part, zero-padded along `dim` to the largest part: the collectives move equal shapes."""
        if x.shape[dim] != sizes[self.rank]:
            raise ValueError(f"rank {self.rank} holds {x.shape[dim]} entries along dim {dim}, expected {sizes[self.rank]}")
        missing = max(sizes) - x.shape[dim]
        if missing:
            pad_shape = list(x.shape)
            pad_shape[dim] = missing
            x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
        return x.contiguous()

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (the others' arguments are ignored)."""
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        with self._collective("broadcast", 4):
            dist.broadcast(value, src=self._global(0), group=self.pg)
        return bool(value.item())

    def barrier(self) -> None:
        dist.barrier(group=self.pg, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _global(self, group_rank: int) -> int:
        return group_rank if self.pg is None else dist.get_global_rank(self.pg, group_rank)


def _joined(parts: list[torch.Tensor], dim: int, sizes: list[int]) -> torch.Tensor:
    """The padded parts of a gather, each cut back to its rank's size and concatenated in rank order."""
    return torch.cat([part.narrow(dim, 0, size) for part, size in zip(parts, sizes, strict=True)], dim=dim)
