"""The kernel precompile (inference/precompile.py): a second process runs each resolution's job kernels on
stand-ins while the worker loads its weights, so Triton's compiles are on disk before the warm-up. What makes it
worth anything is that the stand-ins run exactly the shapes of a real job; that is checked here module by module
on the tiny model, against a real default-length job of the pipeline."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from PIL import Image
from torch import nn

from inference.configs import A14B, TINY
from inference.dit import KERNEL_BLOCKS
from inference.pipeline import I2VPipeline, estimate_weight_bytes, precompile_groups
from inference.precompile import Precompile, run_stand_ins, stand_in_config
from inference.types import GenerationRequest

Call = tuple[str, tuple[tuple[int, ...], ...]]


@contextmanager
def module_calls(skip: set[int] | None = None) -> Iterator[set[Call]]:
    """Every module call in the block as (class, shapes of its tensor inputs), but those of modules in `skip`."""
    calls: set[Call] = set()

    def record(module: nn.Module, args: tuple) -> None:
        if id(module) not in (skip or set()):
            shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
            calls.add((f"{type(module).__module__}.{type(module).__qualname__}", shapes))

    handle = nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield calls
    finally:
        handle.remove()


def test_the_stand_ins_run_every_shape_a_default_job_runs():
    pipeline = I2VPipeline.load("tiny", device="cpu")
    text_modules = {id(m) for m in pipeline._text.module.modules()} if pipeline._text is not None else set()
    job: set[Call] = set()
    for resolution, (width, height) in TINY.resolutions.items():
        request = GenerationRequest(image=Image.new("RGB", (width, height), (200, 40, 90)), prompt="a fox", seed=3,
                                    num_steps=1, resolution=resolution, adaptive_resolution=False)
        with module_calls(skip=text_modules) as calls:
            pipeline.generate(request)
        job |= calls
    with module_calls() as stand_in:
        seconds = run_stand_ins(TINY, device=torch.device("cpu"), dtype=torch.float32, attention="sla",
                                fp8_linears=False)
    assert list(seconds) == list(TINY.resolutions)
    assert any("inference.dit" in name for name, _ in job) and any("inference.vae" in name for name, _ in job)
    assert job <= stand_in, sorted(job - stand_in)


def test_the_stand_in_dit_has_two_blocks_and_the_real_width():
    config = stand_in_config(A14B)
    assert config.dit.num_layers == KERNEL_BLOCKS == 2
    assert config.dit.dim == A14B.dit.dim and config.dit.ffn_dim == A14B.dit.ffn_dim
    assert config.vae == A14B.vae and config.resolutions == A14B.resolutions


def test_precompile_runs_one_process_per_resolution_where_they_fit_beside_the_weights():
    sizes = estimate_weight_bytes(A14B, dict.fromkeys(("high", "low", "vae", "text")), torch.bfloat16)
    sizes["expert"] //= 2  # fp8 block linears
    assert precompile_groups(A14B, sizes, torch.bfloat16, 139 * 2**30) == [["480p"], ["720p"]]  # an H200
    assert precompile_groups(A14B, sizes, torch.bfloat16, 56 * 2**30) == [None]  # room for one: all in it
    assert precompile_groups(A14B, sizes, torch.bfloat16, 48 * 2**30) == []  # a 48 GB card compiles in its warm-up


def test_the_precompile_processes_report_their_timings_or_fail_without_raising(caplog):
    done = Precompile("tiny", device=torch.device("cpu"), attention="sla", fp8_linears=False,
                      groups=[["480p"], ["720p"]]).finish(timeout_s=300)
    assert done is not None and done["processes"] == 2 and done["wall_s"] >= done["waited_s"] > 0
    assert sorted(done["resolutions_s"]) == ["480p", "720p"]

    with caplog.at_level(logging.WARNING, logger="inference.precompile"):
        failed = Precompile("no-such-model", device=torch.device("cpu"), attention="sla",
                            fp8_linears=False).finish(timeout_s=300)
    assert failed is None
    assert "kernel precompile failed" in caplog.text and "no-such-model" in caplog.text


def test_one_failed_precompile_process_keeps_the_others_timings(caplog):
    with caplog.at_level(logging.WARNING, logger="inference.precompile"):
        done = Precompile("tiny", device=torch.device("cpu"), attention="sla", fp8_linears=False,
                          groups=[["480p"], ["no-such-resolution"]]).finish(timeout_s=300)
    assert done is not None and list(done["resolutions_s"]) == ["480p"]
    assert "kernel precompile failed" in caplog.text


def test_a_precompile_past_its_time_is_stopped(caplog):
    slow = Precompile("tiny", device=torch.device("cpu"), attention="sla", fp8_linears=False)
    with caplog.at_level(logging.WARNING, logger="inference.precompile"):
        assert slow.finish(timeout_s=0.01) is None
    assert all(p.returncode is not None for p, _ in slow._children)  # killed, not left running
    assert "still running" in caplog.text


def test_a_precompile_that_cannot_start_leaves_the_load_alone(monkeypatch, caplog):
    monkeypatch.setattr("sys.executable", "/nonexistent/python3")
    with caplog.at_level(logging.WARNING, logger="inference.precompile"):
        never = Precompile("tiny", device=torch.device("cpu"), attention="sla", fp8_linears=False)
        assert never.finish() is None
        never.stop()
    assert "could not start" in caplog.text
