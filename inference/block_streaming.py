"""Weights streamed block by block: an expert too large for the GPU's memory runs with only a few of its blocks there.

The memory policy "stream" (inference.pipeline) keeps each expert's repeated blocks in pinned host memory and copies
each block onto the GPU on a side stream a few blocks ahead of the one computing, so the copies overlap compute;
after a block's forward its device copy is dropped. Everything else of the expert (embeddings, head) stays on the
GPU. A block's compute takes longer than its weights take to cross PCIe, so the copies hide behind compute and a
24 GB card runs the pair of experts at nearly full speed (bench/README.md has the measured cost).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

# Byte offset alignment of each tensor inside a packed buffer: every dtype's views stay aligned, and copies start on
# 256-byte boundaries.
_ALIGN = 256


def _unique_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield tensor


def _aligned(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN


class _PackedHost:
    """Host bytes holding many tensors back to back, page-locked for CUDA so copies from it are asynchronous.

    One buffer registered with cudaHostRegister rather than a pinned allocation per tensor: PyTorch's pinned
    allocator rounds each allocation up to a power of two (+60% for a 79 MB fp8 q/k/v weight)."""

    def __init__(self, nbytes: int, pin: bool) -> None:
        self.bytes = torch.empty(max(nbytes, 1), dtype=torch.uint8)
        self.registered = False
        if pin:
            result = torch.cuda.cudart().cudaHostRegister(self.bytes.data_ptr(), self.bytes.numel(), 0)
            if int(result) != 0:  # pragma: no cover - depends on the host's locked-memory limit
                # Still correct, only copies become synchronous: fall back to PyTorch's pinned allocator.
                self.bytes = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
            else:
                self.registered = True

    def __del__(self) -> None:
        if self.registered:
            torch.cuda.cudart().cudaHostUnregister(self.bytes.data_ptr())


def _view(buffer: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    nbytes = like.numel() * like.element_size()
    return buffer[offset : offset + nbytes].view(like.dtype).view(like.shape)


class StreamedBlocks:
    """Stream `blocks` (run in order, each once per forward, like WanDiT.blocks) from host memory to `device`.

    Forward hooks do the work: before block i runs, blocks i..i+ahead are on their way (wrapping around to the
    first blocks, which the next forward of this expert needs first) and the compute stream waits for block i's
    copy; after it runs, block i's tensors point back at their host copies and its device buffer is released to
    the caching allocator (stream-ordered, so it is reused only after block i's kernels). `park()` drops every
    device copy; `prefetch()` starts the first blocks' copies ahead of a forward.
    """

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device, *, ahead: int = 2) -> None:
        self.blocks = list(blocks)
        self.device = device
        self.ahead = max(1, min(ahead, len(self.blocks) - 1)) if len(self.blocks) > 1 else 0
        self._tensors = [list(_unique_tensors(block)) for block in self.blocks]
        self._offsets: list[list[int]] = []
        self._spans: list[tuple[int, int]] = []
        total = 0
        for tensors in self._tensors:
            start = total
            offsets = []
            for tensor in tensors:
                offsets.append(total - start)
                total += _aligned(tensor.numel() * tensor.element_size())
            self._offsets.append(offsets)
            self._spans.append((start, total - start))
        on_cuda = device.type == "cuda"
        self._host = _PackedHost(total, pin=on_cuda)
        self._host_views: list[list[torch.Tensor]] = []
        for tensors, offsets, (start, size) in zip(self._tensors, self._offsets, self._spans, strict=True):
            block_bytes = self._host.bytes[start : start + size]
            views = []
            for tensor, offset in zip(tensors, offsets, strict=True):
                view = _view(block_bytes, offset, tensor)
                view.copy_(tensor.detach())
                tensor.data = view
                views.append(view)
            self._host_views.append(views)
        self._stream = torch.cuda.Stream(device) if on_cuda else None
        self._on_device: list[torch.Tensor | None] = [None] * len(self.blocks)
        self._ready: list[torch.cuda.Event | None] = [None] * len(self.blocks)
        self._copy_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.bytes_copied = 0
        self._handles = []
        for index, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(lambda _m, _a, i=index: self._enter(i)))
            self._handles.append(block.register_forward_hook(lambda _m, _a, _o, i=index: self._leave(i)))

    @property
    def host_bytes(self) -> int:
        return self._host.bytes.numel()

    @property
    def pinned(self) -> bool:
        return self._host.bytes.is_pinned()

    def blocks_on_device(self) -> int:
        return sum(buffer is not None for buffer in self._on_device)

    def _fetch(self, index: int) -> None:
        if self._on_device[index] is not None:
            return
        start, size = self._spans[index]
        source = self._host.bytes[start : start + size]
        # Allocated on the compute stream: once this block's device copy is dropped, the allocator reuses the
        # memory in compute-stream order.
        target = torch.empty(size, dtype=torch.uint8, device=self.device)
        if self._stream is None:
            target.copy_(source)
        else:
            # The buffer may be memory that queued compute work still reads (a block released a moment ago):
            # the copy waits for everything queued so far.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self._stream):
                begin.record()
                target.copy_(source, non_blocking=True)
                end.record()
            self._copy_events.append((begin, end))
            self._ready[index] = end
        self.bytes_copied += size
        self._on_device[index] = target
        for tensor, offset in zip(self._tensors[index], self._offsets[index], strict=True):
            tensor.data = _view(target, offset, tensor)

    def _enter(self, index: int) -> None:
        count = len(self.blocks)
        for step in range(self.ahead + 1):
            self._fetch((index + step) % count)
        ready = self._ready[index]
        if ready is not None:
            torch.cuda.current_stream(self.device).wait_event(ready)
            self._ready[index] = None

    def _leave(self, index: int) -> None:
        ready = self._ready[index]
        if ready is not None:
            # Never release a buffer that a copy is still writing (only when the block did not run after its fetch).
            ready.synchronize()
            self._ready[index] = None
        for tensor, view in zip(self._tensors[index], self._host_views[index], strict=True):
            tensor.data = view
        self._on_device[index] = None

    def prefetch(self) -> None:
        """Start copying the first blocks, so the next forward does not wait for them, and drop any other block's
        device copy (a forward that stopped early leaves some: a warm-up through WanDiT.first_blocks, an error)."""
        first = min(self.ahead + 1, len(self.blocks))
        for index in range(first, len(self.blocks)):
            if self._on_device[index] is not None:
                self._leave(index)
        for index in range(first):
            self._fetch(index)

    def park(self) -> None:
        for index in range(len(self.blocks)):
            if self._on_device[index] is not None:
                self._leave(index)

    def copy_seconds(self) -> float:
        """Seconds the side stream spent copying since the last call (waits for those copies to finish)."""
        seconds = 0.0
        for begin, end in self._copy_events:
            end.synchronize()
            seconds += begin.elapsed_time(end) / 1000
        self._copy_events.clear()
        return seconds

    def remove(self) -> None:
        """Unhook the blocks and leave their tensors on the host."""
        self.park()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
