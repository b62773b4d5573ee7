"""What this worker process's GPUs are doing, read for its heartbeat (generation.models.Worker.gpus; /metrics
exports it).

One reading per visible GPU (CUDA_VISIBLE_DEVICES order, index as torch numbers it): device memory in use and in
total, the memory this process's caching allocator holds, and utilisation (percent of the last sample period a
kernel ran). Memory comes from `torch.cuda.mem_get_info` once this process has CUDA up; a process that has not
(a multi-GPU group's supervisor, whose ranks hold the GPUs) reads the used memory from NVML instead, which needs
no CUDA context, and has no total. Utilisation always comes from NVML (`torch.cuda.utilization`, nvidia-ml-py in
the worker lock). Any value that cannot be read is None; a host without CUDA gets an empty list, never an error.
Worker side: this module imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

GpuReading = dict[str, Any]
GpuReader = Callable[[], list[GpuReading]]
FIELDS = ("memory_used_bytes", "memory_total_bytes", "memory_reserved_bytes", "utilization_percent")


def read_gpus() -> list[GpuReading]:
    try:
        import torch
    except ImportError:
        return []
    try:
        if not torch.cuda.is_available():
            return []
        count = torch.cuda.device_count()
    except Exception:
        log.debug("no CUDA devices to read", exc_info=True)
        return []
    return [_read_one(torch, index) for index in range(count)]


def _attempt(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:  # NVML missing or the driver refusing: this value is unknown, the beat goes on
        log.debug("GPU reading failed", exc_info=True)
        return None


def _read_one(torch: Any, index: int) -> GpuReading:
    reading: GpuReading = {"index": index, "name": None, **dict.fromkeys(FIELDS)}
    if torch.cuda.is_initialized():
        memory = _attempt(lambda: torch.cuda.mem_get_info(index))
        if memory is not None:
            free, total = memory
            reading["memory_used_bytes"], reading["memory_total_bytes"] = int(total - free), int(total)
        reading["memory_reserved_bytes"] = _attempt(lambda: int(torch.cuda.memory_reserved(index)))
        reading["name"] = _attempt(lambda: torch.cuda.get_device_name(index))
    else:
        reading["memory_used_bytes"] = _attempt(lambda: int(torch.cuda.device_memory_used(index)))
    reading["utilization_percent"] = _attempt(lambda: int(torch.cuda.utilization(index)))
    return reading
