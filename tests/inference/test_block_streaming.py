"""StreamedBlocks on CPU: blocks move in for their forward and back out after it, results unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference.block_streaming import StreamedBlocks


class Chain(nn.Module):
    def __init__(self, count: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(count))
        for block in self.blocks:
            block.register_buffer("offset", torch.randn(8).to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x) + block.offset.float()
        return x


def _host_range(streamer: StreamedBlocks) -> tuple[int, int]:
    start = streamer._host.bytes.data_ptr()
    return start, start + streamer.host_bytes


def _on_host(block: nn.Module, streamer: StreamedBlocks) -> bool:
    low, high = _host_range(streamer)
    return all(low <= t.data_ptr() < high for t in (*block.parameters(), *block.buffers()))


@pytest.mark.parametrize(("count", "ahead"), [(5, 2), (3, 1), (1, 2)])
def test_streamed_forward_equals_plain_and_blocks_go_back(count: int, ahead: int) -> None:
    model = Chain(count)
    x = torch.randn(4, 8)
    expected = model(x)
    streamer = StreamedBlocks(model.blocks, torch.device("cpu"), ahead=ahead)
    assert all(_on_host(block, streamer) for block in model.blocks)
    seen: list[int] = []
    for index, block in enumerate(model.blocks):
        # Once the streamer's pre-hook has run, the block's forward reads its streamed copy, not the host bytes.
        block.register_forward_pre_hook(lambda m, a, i=index: seen.append(i) if not _on_host(m, streamer) else None)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert seen == list(range(count))
    # Afterwards only the blocks prefetched for the next forward (wrapping to the first ones) are on the device.
    assert streamer.blocks_on_device() == streamer.ahead == (min(ahead, count - 1) if count > 1 else 0)
    streamer.park()
    assert streamer.blocks_on_device() == 0 and all(_on_host(block, streamer) for block in model.blocks)
    assert streamer.bytes_copied >= streamer.host_bytes
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # and again, from the host copies


def test_prefetch_then_remove_leaves_weights_on_host() -> None:
    model = Chain(4)
    x = torch.randn(2, 8)
    expected = model(x)
    streamer = StreamedBlocks(model.blocks, torch.device("cpu"), ahead=1)
    streamer.prefetch()
    assert streamer.blocks_on_device() == 2
    streamer.remove()
    assert streamer.blocks_on_device() == 0
    copied = streamer.bytes_copied
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert streamer.bytes_copied == copied  # unhooked: nothing streams any more


def test_prefetch_after_a_forward_that_stopped_early_keeps_only_the_first_blocks() -> None:
    model = Chain(5)
    x = torch.randn(2, 8)
    expected = model(x)
    streamer = StreamedBlocks(model.blocks, torch.device("cpu"), ahead=2)
    model.blocks[1](model.blocks[0](x))  # the first two blocks, as a warm-up through WanDiT.first_blocks: 2, 3 stay
    assert not _on_host(model.blocks[3], streamer)
    streamer.prefetch()
    assert streamer.blocks_on_device() == 3  # 0, 1 and 2: what the next forward needs first, and no more
    assert _on_host(model.blocks[3], streamer) and not _on_host(model.blocks[0], streamer)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
