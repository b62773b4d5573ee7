"""WanDiT.forward hands each block's FFN update to the next block's first norm, so one pass over the fp32 stream
does both: it must give the numbers of the blocks called one by one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from inference.configs import TINY
from inference.dit import WanDiT
from turbokernels import dispatch

# Three layers: the middle block both takes a pending update and leaves one.
CFG = dataclasses.replace(TINY.dit, num_layers=3)
COUNTED = ("gated_residual", "residual_norm", "layer_norm_modulate", "layer_norm_modulate_fp8")


def _tiny_dit(fp8: bool) -> WanDiT:
    torch.manual_seed(0)
    dit = WanDiT(CFG, attention="dense").eval().requires_grad_(False)
    with torch.no_grad():
        for block in dit.blocks:  # non-zero modulation, so the gates and shifts carried across blocks matter
            block.modulation.normal_(std=0.1)
        dit.head.modulation.normal_(std=0.1)
    if fp8:
        dit.use_fp8_linears()
    return dit


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, CFG.in_dim, 3, 4, 6, generator=gen)
    context = torch.randn(2, 12, CFG.text_dim, generator=gen)
    return x, torch.tensor([900.0, 250.0]), context


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = dict.fromkeys(COUNTED, 0)
    for name in COUNTED:
        real = getattr(dispatch, name)

        def counted(*args, _name=name, _real=real, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(dispatch, name, counted)
    return calls


def _forward_recording_chain_inputs(
    dit: WanDiT, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor
) -> tuple[torch.Tensor, dict[str, tuple]]:
    """dit(x, t, context) and the positional arguments it gave its first block and its head."""
    seen: dict[str, tuple] = {}
    hooks = [
        dit.blocks[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("block", args)),
        dit.head.register_forward_pre_hook(lambda _m, args: seen.setdefault("head", args)),
    ]
    try:
        return dit(x, t, context), seen
    finally:
        for hook in hooks:
            hook.remove()


def _forward_block_by_block(dit: WanDiT, inputs: dict[str, tuple], x_shape: torch.Size) -> torch.Tensor:
    """dit's forward from the same chain inputs with each block called alone (the old signature) and the head's
    own norm: only the block chain and the head differ from dit(x, t, context)."""
    residual, time_mod, text, rope_cos, rope_sin = inputs["block"]
    for block in dit.blocks:
        residual = block(residual, time_mod, text, rope_cos, rope_sin)
        assert isinstance(residual, torch.Tensor)  # standalone, a block returns the finished stream
    grid = tuple(size // patch for size, patch in zip(x_shape[2:], CFG.patch_size, strict=True))
    return dit.unpatchify(dit.head(residual, inputs["head"][1]), grid, x_shape[0])


# The interpreted kernels take seconds per forward: one case, the fp8 path the GPU runs.
@pytest.mark.parametrize(("backend", "fp8"), [("reference", False), ("reference", True), ("kernel", True)])
def test_forward_fuses_each_ffn_update_into_the_next_norm_with_the_unfused_numbers(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, backend: str, fp8: bool
) -> None:
    if backend == "kernel":
        request.getfixturevalue("interpreted_kernels")  # the Triton kernels, run by the interpreter on CPU
    dispatch.set_backend(backend)
    request.addfinalizer(lambda: dispatch.set_backend(None))
    dit = _tiny_dit(fp8)
    x, t, context = _inputs()
    with torch.inference_mode():
        calls = _count_calls(monkeypatch)
        fused, inputs = _forward_recording_chain_inputs(dit, x, t, context)
        fused_calls = dict(calls)
        calls.update(dict.fromkeys(COUNTED, 0))
        unfused = _forward_block_by_block(dit, inputs, x.shape)

    layers = CFG.num_layers
    first_norm = "layer_norm_modulate_fp8" if fp8 else "layer_norm_modulate"
    # Fused: one residual_norm per block boundary, so a gated_residual only for the last block's update (before the
    # head's norm) and a plain norm only where nothing is pending: the first block and the head.
    expected = dict.fromkeys(COUNTED, 0) | {"gated_residual": 1, "residual_norm": 3 * layers - 1, first_norm: 1}
    expected["layer_norm_modulate"] += 1
    assert fused_calls == expected
    # Block by block: a gated_residual per block and a plain norm at the start of each block and in the head.
    expected_unfused = dict.fromkeys(COUNTED, 0) | {"gated_residual": layers, "residual_norm": 2 * layers}
    expected_unfused[first_norm] += layers
    expected_unfused["layer_norm_modulate"] += 1
    assert calls == expected_unfused

    assert fused.shape == (2, CFG.out_dim, 3, 4, 6) and fused.dtype == torch.float32
    assert fused.abs().max() > 0.1
    # The same ops in the same order per element (x + y * gate in fp32, then the norm of that sum): bit for bit.
    assert torch.equal(fused, unfused)
