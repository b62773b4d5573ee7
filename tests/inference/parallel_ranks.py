"""What each rank of the CPU (gloo) groups of tests/inference/test_parallel.py runs. A separate module, free of
pytest and Django, because torch.multiprocessing imports it again in every rank process.

Every function runs the parallel version of one piece of the tiny model and saves rank-tagged results to
`folder/rank{r}.pt`; the test process computes the one-process reference and compares.
"""

from __future__ import annotations

from pathlib import Path

import torch

from inference.checkpoint import load_dit
from inference.configs import TINY
from inference.parallel.dit import sequence_parallel
from inference.parallel.group import ParallelGroup
from inference.parallel.pipeline import ParallelI2VPipeline
from inference.parallel.vae import ParallelVAE
from inference.pipeline import I2VPipeline
from inference.types import GenerationCanceled, GenerationRequest
from inference.vae import REFERENCE_OPTIONS, VAEOptions, build_vae

# An uneven token count (3 * 5 * 7 = 105 tokens over 2 or 4 ranks) and a short video.
STEP_GRID = (3, 10, 14)  # latent (f, h, w): tokens (3, 5, 7) after the 2x2 patches
VAE_VIDEO = (5, 40, 16)  # frames, height, width: 5 latent rows, split unevenly over 2 and 4 ranks
PROMPT = "a red kite over the dunes"
FRAMES = 5


def step_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of two (the pipeline's jobs are batches of one: both layouts of the exchange get used)."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, TINY.dit.in_dim, *STEP_GRID, generator=generator)
    t = torch.tensor([937.0, 412.0])
    context = torch.randn(2, TINY.dit.text_len, TINY.dit.text_dim, generator=generator)
    return x, t, context


def dit_models(kinds: list[str]) -> dict[str, torch.nn.Module]:
    return {kind: load_dit(TINY, None, device="cpu", dtype=torch.float32, attention=kind).eval() for kind in kinds}


def vae_options(full: bool) -> dict[str, VAEOptions]:
    return {"fast": VAEOptions(), **({"reference": REFERENCE_OPTIONS} if full else {})}


def vae_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    frames, height, width = VAE_VIDEO
    video = torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1
    latent_frames = 1 + (frames - 1) // TINY.vae.temporal_stride
    z = torch.randn(1, TINY.vae.z_dim, latent_frames, height // 8, width // 8, generator=generator)
    return video, z


def request(image: object, **overrides: object) -> GenerationRequest:
    fields = {"image": image, "prompt": PROMPT, "seed": 5, "num_steps": 4, "num_frames": FRAMES,
              "resolution": "480p", "adaptive_resolution": False}
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def recorded_generate(pipeline: I2VPipeline, image: object, **callbacks: object) -> dict[str, object]:
    """A whole job through `generate`, keeping the fp32 image latent and the sampler's final latent on the way."""
    kept: dict[str, object] = {}
    encode_image, denoise = pipeline._encode_image, pipeline._denoise

    def keep(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            kept[name] = fn(*args, **kwargs)
            return kept[name]

        return wrapper

    pipeline._encode_image = keep("condition", encode_image)  # type: ignore[method-assign]
    pipeline._denoise = keep("latent", denoise)  # type: ignore[method-assign]
    try:
        result = pipeline.generate(request(image), **callbacks)  # type: ignore[arg-type]
    finally:
        del pipeline._encode_image, pipeline._denoise
    kept.update(frames=torch.from_numpy(result.frames.copy()), device_name=result.device_name)
    return kept


def run_everything(group: ParallelGroup, folder: str, image: object, full: bool) -> None:
    """One group, every check: a DiT step, the VAE alone, a whole job, and (`full`) the dense DiT step, the VAE's
    reference options and a cancel that rank 0 decides."""
    torch.set_num_threads(1)
    out: dict[str, object] = {"world": group.world}

    x, t, context = step_inputs()
    with torch.no_grad():
        for kind, model in dit_models(["sla", "dense"] if full else ["sla"]).items():
            with sequence_parallel(model, group):
                out[f"step_{kind}"] = model(x, t, context)
            out[f"hooks_cleared_{kind}"] = model.sequence_parallel is None and all(
                block.self_attn.sequence_parallel is None for block in model.blocks)

    video, z = vae_inputs()
    vae = build_vae(TINY.vae).eval()
    for name, options in vae_options(full).items():
        vae.options = options
        parallel = ParallelVAE(vae, group)
        encoded: list[int] = []
        out[f"vae_encode_{name}"] = parallel.encode(video, chunk_latents=1,
                                                    on_chunk=lambda done, _, seen=encoded: seen.append(done))
        out[f"vae_encode_progress_{name}"] = encoded
        chunks: list[torch.Tensor] = []
        out[f"vae_decode_{name}"] = parallel.decode(z, chunk_latents=2, on_chunk=chunks.append)
        out[f"vae_chunks_{name}"] = torch.cat(chunks, dim=2)

    pipeline = ParallelI2VPipeline.load("tiny", group=group)
    events: list[str] = []
    sunk: list[int] = []
    out.update(recorded_generate(pipeline, image, progress=lambda e: events.append(e.stage),
                                 frame_sink=lambda f: sunk.append(len(f))))
    out.update(events=events, sunk=sunk)

    if full:
        asked = []

        def cancel_at_second() -> bool:
            asked.append(1)
            return len(asked) >= 2

        try:
            pipeline.generate(request(image), should_cancel=cancel_at_second)
            out["canceled"] = None
        except GenerationCanceled as exc:
            out["canceled"] = str(exc)
    torch.save(out, Path(folder) / f"rank{group.rank}.pt")
