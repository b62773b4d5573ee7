"""One job across the GPUs of one host on NCCL (pytest -m gpu, on a machine with 2 or more GPUs): a sequence-
parallel step of a 2-layer full-width A14B expert (the production kernels: fp8 fused linears, Gluon/Triton SLA) and
the split VAE decode, each against the same work on one GPU. The CPU suite checks the same code exactly in fp32
(tests/inference/test_parallel.py); here bf16 kernels pick their tiles by problem size, so the bar is closeness."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2+ CUDA GPUs"),
]

GRID = (21, 60, 104)  # latent (f, h, w) of 81 frames at 480p: 32,760 tokens
LATENT = (1, 16, 3, 60, 104)  # 3 latent frames at 480p for the VAE decode


def _inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from inference.configs import A14B

    gen = torch.Generator(device=device).manual_seed(3)
    x = torch.randn(1, A14B.dit.in_dim, *GRID, device=device, generator=gen).bfloat16()
    t = torch.tensor([937.0], device=device).bfloat16()
    context = torch.randn(1, 512, A14B.dit.text_dim, device=device, generator=gen).bfloat16()
    z = torch.randn(*LATENT, device=device, generator=gen).bfloat16()
    return x, t, context, z


def _models(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    from inference.checkpoint import load_dit
    from inference.configs import A14B
    from inference.vae import build_vae

    config = replace(A14B, dit=replace(A14B.dit, num_layers=2))
    dit = load_dit(config, None, device=device, dtype=torch.bfloat16).eval().requires_grad_(False)
    if torch.cuda.get_device_capability(device) >= (8, 9):
        dit.use_fp8_linears()
    vae = build_vae(A14B.vae).to(device=device, dtype=torch.bfloat16).eval().requires_grad_(False)
    return dit, vae


def _rank(group, folder: str) -> None:
    from inference.parallel.dit import sequence_parallel
    from inference.parallel.vae import ParallelVAE

    dit, vae = _models(group.device)
    x, t, context, z = _inputs(group.device)
    with torch.no_grad(), sequence_parallel(dit, group):
        step = dit(x, t, context)
    video = ParallelVAE(vae, group).decode(z, chunk_latents=2)
    if group.is_first:
        torch.save({"step": step.float().cpu(), "video": video.float().cpu()}, Path(folder) / "parallel.pt")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("world", sorted({2, min(4, torch.cuda.device_count() if torch.cuda.is_available() else 2),
                                          min(8, torch.cuda.device_count() if torch.cuda.is_available() else 2)}))
def test_sequence_parallel_step_and_split_vae_match_one_gpu(world: int) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        pytest.fail("GPU tests must run without TRITON_INTERPRET (run them in their own pytest process)")
    from inference.parallel.launch import spawn

    with tempfile.TemporaryDirectory() as folder:
        spawn(_rank, world, folder, device="cuda")
        parallel = torch.load(Path(folder) / "parallel.pt")
    device = torch.device("cuda", 0)
    dit, vae = _models(device)
    x, t, context, z = _inputs(device)
    with torch.no_grad():
        step = dit(x, t, context).float().cpu()
        video = vae.decode(z, chunk_latents=2).float().cpu()
    assert _cosine(parallel["step"], step) >= 0.9995
    assert (parallel["video"] - video).abs().max() <= 2 * 2**-7 + 1e-3  # a couple of bf16 steps near 1.0
    assert _cosine(parallel["video"], video) >= 0.9999
