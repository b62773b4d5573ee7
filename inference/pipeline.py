"""The Wan2.2 image-to-video pipeline: image + prompt -> uint8 frames, with both experts loaded once per process.

Stages: text encode (umT5) -> image encode (VAE on the image followed by black frames) -> rCM denoising over the
high- and low-noise experts -> VAE decode. Every stage and step reports progress and may be canceled in between.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import UMT5EncoderModel

from inference import lora
from inference.block_streaming import StreamedBlocks
from inference.checkpoint import load_dit, weights_status
from inference.conditioning import VAE_CHUNK_LATENTS, image_condition
from inference.configs import ModelConfig, get_config
from inference.dit import KERNEL_BLOCKS, WanDiT
from inference.image import check_resize_mode, load_image, preprocess_image, target_size, validate_num_frames
from inference.precompile import Precompile, stand_in_config
from inference.sampler import check_num_steps, sample
from inference.text_encoder import load_text_encoder, umt5_config
from inference.types import (
    CancelHook,
    GenerationCanceled,
    GenerationRequest,
    GenerationResult,
    InferenceInputError,
    ProgressCallback,
    ProgressEvent,
    WeightsError,
)
from inference.vae import WanVAE, load_vae
from inference.video import frames_to_uint8, frames_to_uint8_into
from turbokernels.dispatch import set_backend as set_kernel_backend

ATTENTION_MODES = ("sla", "dense", "auto")  # auto: SLA where the checkpoint carries its weights
MEMORY_POLICIES = ("auto", "resident", "offload", "stream")
# auto: fp8 e4m3 block linears on GPUs with fp8 tensor cores (Ada/Hopper and newer), the checkpoint's own
# precision (bf16 or int8 tiles) elsewhere. Overridable with TURBO_LINEARS.
LINEAR_MODES = ("auto", "fp8", "native")

# Receives each decoded chunk's uint8 frames [n, H, W, 3] as soon as they exist (the worker's mp4 encoder).
FrameSink = Callable[[np.ndarray], None]


def resolve_linears(mode: str, device: torch.device) -> str:
    """"fp8" or "native" for this device; raises InferenceInputError for an unknown or impossible mode."""
    if mode not in LINEAR_MODES:
        raise InferenceInputError(f"unknown linears {mode!r}; choose one of {', '.join(LINEAR_MODES)}")
    has_fp8 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    if mode == "fp8" and not has_fp8:
        raise InferenceInputError(f"linears='fp8' needs a CUDA GPU with fp8 tensor cores; {device} has none")
    if mode == "auto":
        return "fp8" if has_fp8 else "native"
    return mode
SEED_LIMIT = 2**64

# Share of the overall progress bar that each stage owns; the remainder after decode is the uint8 conversion.
# Denoising dominates on a GPU, so it owns most of the bar.
_STAGE_SHARE = {"text_encode": 0.04, "image_encode": 0.04, "denoise": 0.80, "decode": 0.10}


@dataclass(frozen=True)
class ResolvedRequest:
    """A request's knobs after defaults and validation; computed before any weights are touched."""

    resolution: str
    num_frames: int
    num_steps: int
    seed: int


def resolve_request(
    config: ModelConfig,
    *,
    seed: int,
    num_steps: int,
    resolution: str | None,
    num_frames: int | None,
) -> ResolvedRequest:
    """Apply the model's defaults and reject what it cannot serve, naming the offending value."""
    check_num_steps(num_steps, config.sampler.max_steps)
    name = config.default_resolution if resolution is None else resolution
    if name not in config.resolutions:
        known = ", ".join(config.resolutions)
        raise InferenceInputError(f"unknown resolution {name!r} for model {config.name}; choose one of {known}")
    frames = config.default_frames if num_frames is None else num_frames
    validate_num_frames(frames, config.max_frames)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise InferenceInputError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
    return ResolvedRequest(resolution=name, num_frames=frames, num_steps=num_steps, seed=seed)


def pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise InferenceInputError(f"unknown device {device!r}: {exc}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InferenceInputError(f"device {device!r} requested but CUDA is not available")
    return chosen


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _module_tensors(module))


def _meta_module_bytes(factory: Callable[[], nn.Module], dtype: torch.dtype) -> int:
    with torch.device("meta"):
        module = factory()
    return sum(t.numel() for t in _module_tensors(module)) * dtype.itemsize


def _file_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def estimate_weight_bytes(config: ModelConfig, paths: dict[str, Path | None], dtype: torch.dtype) -> dict[str, int]:
    """Device bytes of one expert, the text encoder and the VAE, before loading any of them: checkpoint file sizes
    (int8 files count as int8), or the parameter count at `dtype` for seeded random weights."""
    experts = [
        _file_bytes(path) if path is not None else _meta_module_bytes(lambda: WanDiT(config.dit, "sla"), dtype)
        for path in (paths["high"], paths["low"])
    ]
    text_path = paths["text"]
    text = (
        _file_bytes(text_path)
        if text_path is not None
        else _meta_module_bytes(lambda: UMT5EncoderModel(umt5_config(config.text)), dtype)
    )
    return {"expert": max(experts), "text": text, "vae": _meta_module_bytes(lambda: WanVAE(config.vae), dtype)}


def activation_headroom_bytes(config: ModelConfig) -> int:
    """A generous bound on working memory beyond the weights at the largest resolution and default length.

    DiT: per token a handful of hidden-size tensors plus the FFN intermediate, in 2-byte precision.
    VAE decode: about sixteen full-resolution feature maps of 4 frames at the base width (the measured decode peak
    is in bench/README.md).
    """
    width, height = max(config.resolutions.values(), key=lambda wh: wh[0] * wh[1])
    latent_frames = (config.default_frames - 1) // config.vae.temporal_stride + 1
    pt, ph, pw = config.dit.patch_size
    stride = config.vae.spatial_stride
    tokens = (latent_frames // pt) * (height // stride // ph) * (width // stride // pw)
    dit = tokens * (6 * config.dit.dim + 2 * config.dit.ffn_dim) * 2
    vae = 16 * width * height * 4 * config.vae.base_dim * 2
    return max(dit, vae)


@dataclass(frozen=True)
class MemoryPlan:
    experts_resident: bool
    text_encoder_resident: bool
    # Only a few blocks of the expert in use on the GPU at a time, streamed from pinned host memory
    # (inference.block_streaming); implies experts_resident=False.
    experts_streamed: bool = False


def plan_memory(
    policy: str,
    *,
    on_cuda: bool,
    free_bytes: int,
    expert_bytes: int,
    text_encoder_bytes: int,
    vae_bytes: int,
    headroom_bytes: int,
) -> MemoryPlan:
    """Decide what stays on the GPU between uses.

    "auto": everything resident when it all fits in free memory; else both experts resident and the text encoder
    parked after use; else only the expert in use on the GPU and the idle one parked in pinned host memory; else
    (cards of 24 GB and less) both experts' blocks streamed from pinned host memory a few at a time.
    """
    if policy not in MEMORY_POLICIES:
        raise InferenceInputError(f"unknown memory_policy {policy!r}; choose one of {', '.join(MEMORY_POLICIES)}")
    if policy == "resident" or (policy == "auto" and not on_cuda):
        return MemoryPlan(experts_resident=True, text_encoder_resident=True)
    if policy == "offload":
        return MemoryPlan(experts_resident=False, text_encoder_resident=False)
    if policy == "stream":
        return MemoryPlan(experts_resident=False, text_encoder_resident=False, experts_streamed=True)
    core = 2 * expert_bytes + vae_bytes + headroom_bytes
    if core + text_encoder_bytes <= free_bytes:
        return MemoryPlan(experts_resident=True, text_encoder_resident=True)
    if core <= free_bytes:
        return MemoryPlan(experts_resident=True, text_encoder_resident=False)
    one_expert = core - expert_bytes
    return MemoryPlan(experts_resident=False, text_encoder_resident=False, experts_streamed=one_expert > free_bytes)


def precompile_groups(config: ModelConfig, sizes: dict[str, int], dtype: torch.dtype,
                      free_bytes: int) -> list[list[str] | None]:
    """The resolutions of each precompile process (inference/precompile.py) that fit beside all the weights while
    they load: one process per resolution where they all fit (each with its stand-in DiT, a VAE, a job's working
    memory and a CUDA context), else one for all of them ([None]), else none (a smaller card compiles in its
    warm-up)."""
    stand_in = _meta_module_bytes(lambda: WanDiT(stand_in_config(config).dit, "sla"), dtype)
    room = free_bytes - (2 * sizes["expert"] + sizes["text"] + sizes["vae"])
    child = stand_in + sizes["vae"] + activation_headroom_bytes(config) + 2**30
    resolutions = list(config.resolutions)
    if len(resolutions) * child <= room:
        return [[resolution] for resolution in resolutions]
    return [None] if child <= room else []


def usable_gpu_bytes(device: torch.device) -> int:
    """Free device memory this process may still take: the driver's free bytes, capped by
    torch.cuda.set_per_process_memory_fraction when the process has set one."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = get_fraction(index) if get_fraction is not None else 1.0
    if fraction < 1.0:
        free = min(free, int(fraction * total) - torch.cuda.memory_reserved(index))
    return max(free, 0)


def _module_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


class HostParking:
    """Keeps one module's weights in (pinned) host memory so it can leave the GPU at no cost and return by one copy.

    Weights never change at inference, so parking just points every parameter back at its host copy and lets the
    GPU storage go; fetching allocates on the compute stream and copies on a side stream so the transfer can
    overlap other work (the compute stream waits for it only when the module is next used).
    """

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module = module
        self.device = device
        pin = device.type == "cuda"
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for tensor in _module_tensors(module):
            host = torch.empty_like(tensor, device="cpu", pin_memory=pin)
            host.copy_(tensor.detach())
            self._pairs.append((tensor, host))
        self._stream = torch.cuda.Stream(device) if pin else None
        self._ready: torch.cuda.Event | None = None
        self.on_device = False
        self.park()

    def fetch(self) -> None:
        """Start moving the weights to the device (asynchronous on CUDA); `ready()` before use."""
        if self.on_device:
            return
        if self._stream is None:
            for tensor, host in self._pairs:
                tensor.data = host.to(self.device, copy=True)
        else:
            # Reused blocks may still be read by queued compute work: order the copies after it.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            for tensor, host in self._pairs:
                target = torch.empty_like(host, device=self.device)
                with torch.cuda.stream(self._stream):
                    target.copy_(host, non_blocking=True)
                tensor.data = target
            self._ready = self._stream.record_event()
        self.on_device = True

    def ready(self) -> None:
        """Make sure the weights are on the device and the compute stream will see the finished copy."""
        self.fetch()
        if self._ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self._ready)
            self._ready = None

    def park(self) -> None:
        if self._ready is not None:
            # Never drop device storage that an in-flight copy is still writing.
            self._ready.synchronize()
            self._ready = None
        for tensor, host in self._pairs:
            tensor.data = host
        self.on_device = False


class _Placement:
    """One module either resident on the device or parked on the host between uses."""

    def __init__(self, module: nn.Module, device: torch.device, resident: bool) -> None:
        self.module = module
        self.parking = None if resident else HostParking(module, device)
        if resident:
            module.to(device)

    def fetch(self) -> None:
        if self.parking is not None:
            self.parking.fetch()

    def ready(self) -> nn.Module:
        if self.parking is not None:
            self.parking.ready()
        return self.module

    def park(self) -> None:
        if self.parking is not None:
            self.parking.park()

    def copy_seconds(self) -> float:
        return 0.0


class _StreamedPlacement(_Placement):
    """An expert whose blocks stream from pinned host memory during each forward; the rest stays on the device."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module = module
        self.parking = None
        self.streamer = StreamedBlocks(module.blocks, device)
        streamed = {id(t) for block in module.blocks for t in _module_tensors(block)}
        for tensor in _module_tensors(module):
            if id(tensor) not in streamed:
                tensor.data = tensor.data.to(device)

    def fetch(self) -> None:
        self.streamer.prefetch()

    def ready(self) -> nn.Module:
        return self.module

    def park(self) -> None:
        self.streamer.park()

    def copy_seconds(self) -> float:
        return self.streamer.copy_seconds()


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.timings[name] = time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _Progress:
    def __init__(self, callback: ProgressCallback | None, should_cancel: CancelHook | None) -> None:
        self.callback = callback
        self.should_cancel = should_cancel
        self.done = 0.0

    def check_cancel(self, before: str) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise GenerationCanceled(f"canceled before {before}")

    def stage_started(self, stage: str, **extra: int) -> None:
        """Tell the caller which stage runs now, before its work begins (a label never lags behind the work)."""
        self._emit(ProgressEvent(stage=stage, progress=round(self.done, 6), fraction=0.0, **extra))

    def advanced(self, stage: str, fraction: float) -> None:
        """Part of a long stage (VAE encode or decode chunks) is done."""
        fraction = max(0.0, min(1.0, fraction))
        progress = self.done + _STAGE_SHARE[stage] * fraction
        self._emit(ProgressEvent(stage=stage, progress=round(progress, 6), fraction=round(fraction, 6)))

    def stage_finished(self, stage: str) -> None:
        self.done += _STAGE_SHARE[stage]

    def step_finished(self, step: int, total: int) -> None:
        progress = self.done + _STAGE_SHARE["denoise"] * step / total
        self._emit(ProgressEvent(stage="denoise", progress=round(progress, 6), step=step, total_steps=total,
                                 fraction=round(step / total, 6)))
        if step == total:
            self.done += _STAGE_SHARE["denoise"]

    def finished(self) -> None:
        self.done = 1.0
        self._emit(ProgressEvent(stage="done", progress=1.0))

    def _emit(self, event: ProgressEvent) -> None:
        if self.callback is not None:
            self.callback(event)


def _weight_paths(config: ModelConfig, weights_dir: str | Path | None) -> tuple[Path | None, dict[str, Path | None]]:
    """Where each weight file lives; random-weight models need none. Raises WeightsError naming missing files."""
    if config.random_weights:
        return None, dict.fromkeys(("high", "low", "vae", "text"))
    folder = weights_dir
    if not folder:
        needed = (config.high_noise_file, config.low_noise_file, config.vae_file, config.text_encoder_file)
        raise WeightsError(
            f"model {config.name} needs weight files ({', '.join(needed)}, tokenizer {config.tokenizer_dir}/); "
            "pass a weights folder or set TURBO_MODEL_DIR"
        )
    folder = Path(folder)
    status = weights_status(config, folder)
    missing = [str(name) for name in status["missing"]]  # type: ignore[attr-defined]
    if missing:
        raise WeightsError(f"model {config.name}: missing weight files in {folder}: {', '.join(missing)}")
    return folder, dict(status["paths"])  # type: ignore[call-overload]


def _as_module(component: Any) -> nn.Module | None:
    """The nn.Module that holds a component's weights (the component itself, or its wrapped model)."""
    if isinstance(component, nn.Module):
        return component
    for attr in ("model", "encoder", "module"):
        inner = getattr(component, attr, None)
        if isinstance(inner, nn.Module):
            return inner
    return None


class I2VPipeline:
    """Loaded once per process; `generate` may be called any number of times."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        device: torch.device,
        dtype: torch.dtype,
        high_noise: nn.Module,
        low_noise: nn.Module,
        vae: Any,
        text_encoder: Any,
        memory_policy: str = "auto",
        memory_plan: MemoryPlan | None = None,
    ) -> None:
        """Wrap loaded components; `memory_plan` (from `load`) wins over planning from the modules' sizes here."""
        self.config = config
        self.device = device
        self.dtype = dtype
        self.vae = vae
        self.text_encoder = text_encoder
        self.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

        on_cuda = device.type == "cuda"
        text_module = _as_module(text_encoder)
        vae_module = _as_module(vae)
        self.memory_plan = memory_plan or plan_memory(
            memory_policy,
            on_cuda=on_cuda,
            free_bytes=usable_gpu_bytes(device) if on_cuda else 0,
            expert_bytes=max(module_bytes(high_noise), module_bytes(low_noise)),
            text_encoder_bytes=module_bytes(text_module) if text_module is not None else 0,
            vae_bytes=module_bytes(vae_module) if vae_module is not None else 0,
            headroom_bytes=activation_headroom_bytes(config),
        )
        self._experts = {
            name: _StreamedPlacement(module, device) if self.memory_plan.experts_streamed
            else _Placement(module, device, self.memory_plan.experts_resident)
            for name, module in (("high", high_noise), ("low", low_noise))
        }
        # Installed LoRAs (<weights folder>/loras, set by `load`), and the device paths of the last set used.
        self.loras = lora.LoraLibrary(None)
        # Timings of the kernel precompile that ran during `load` (inference/precompile.py); None if none did.
        self.precompiled: dict[str, Any] | None = None
        self._lora_paths: tuple[tuple[lora.LoraChoice, ...], dict[str, dict[nn.Module, Any]]] | None = None
        self._text = (
            _Placement(text_module, device, self.memory_plan.text_encoder_resident) if text_module is not None else None
        )
        # The first step of every job uses the high-noise expert: have it on the device between jobs (after anything
        # parked above has left it, so a tight memory budget holds).
        self._experts["high"].fetch()

    @property
    def experts(self) -> dict[str, nn.Module]:
        """The high- and low-noise expert modules, wherever their weights currently are."""
        return {name: placement.module for name, placement in self._experts.items()}

    @classmethod
    def load(
        cls,
        model: str,
        weights_dir: str | Path | None = None,
        *,
        device: str | None = None,
        attention: str = "sla",
        memory_policy: str = "auto",
        linears: str | None = None,
        kernels: str | None = None,
        precompile: bool = False,
    ) -> I2VPipeline:
        """Build the pipeline for a model name from `configs.MODELS`; weights come from `weights_dir` (the
        worker passes TURBO_MODEL_DIR, the CLI --weights) unless the model uses seeded random weights.

        The callers read the switches from their environment and pass them in: `linears` ("auto" when None) picks
        fp8 block linears on Hopper-class GPUs; `kernels`, when given, sets the process's kernel backend
        (turbokernels.dispatch: auto, kernel, reference). With `precompile`, on a GPU with room for it beside the
        weights, a second process compiles the Triton kernels while the weights load (inference/precompile.py;
        `precompiled` then holds its timings, None where it did not run or failed)."""
        try:
            config = get_config(model)
        except ValueError as exc:
            raise InferenceInputError(str(exc)) from None
        if attention not in ATTENTION_MODES:
            raise InferenceInputError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_MODES)}")
        if memory_policy not in MEMORY_POLICIES:
            raise InferenceInputError(
                f"unknown memory_policy {memory_policy!r}; choose one of {', '.join(MEMORY_POLICIES)}"
            )
        chosen = pick_device(device)
        dtype = torch.bfloat16 if chosen.type == "cuda" else torch.float32
        linear_mode = resolve_linears(linears or "auto", chosen)
        if kernels is not None:
            set_kernel_backend(kernels)
        folder, paths = _weight_paths(config, weights_dir)

        # Plan before loading, from parameter bytes, so that whatever stays resident loads straight onto the device
        # and only parked parts pass through host memory.
        sizes = estimate_weight_bytes(config, paths, dtype)
        if linear_mode == "fp8" and paths["high"] is None:
            # Random bf16 weights: nearly all bytes are block linears, which fp8 halves.
            sizes["expert"] //= 2
        on_cuda = chosen.type == "cuda"
        free_bytes = usable_gpu_bytes(chosen) if on_cuda else 0
        plan = plan_memory(
            memory_policy,
            on_cuda=on_cuda,
            free_bytes=free_bytes,
            expert_bytes=sizes["expert"],
            text_encoder_bytes=sizes["text"],
            vae_bytes=sizes["vae"],
            headroom_bytes=activation_headroom_bytes(config),
        )
        host = torch.device("cpu")
        expert_device = chosen if plan.experts_resident else host
        groups = precompile_groups(config, sizes, dtype, free_bytes) if precompile and on_cuda else []
        compiling = None
        if groups:
            compiling = Precompile(model, device=chosen, attention=attention, fp8_linears=linear_mode == "fp8",
                                   groups=groups)
        try:
            high = load_dit(config, paths["high"], device=expert_device, dtype=dtype, attention=attention,
                            expert="high")
            low = load_dit(config, paths["low"], device=expert_device, dtype=dtype, attention=attention, expert="low")
            vae = load_vae(config, paths["vae"], device=chosen, dtype=dtype)
            text_device = chosen if plan.text_encoder_resident else host
            text_encoder = load_text_encoder(config, folder, device=text_device, dtype=dtype)
            for module in (high, low):
                module.eval().requires_grad_(False)
                if linear_mode == "fp8":
                    module.use_fp8_linears()
        except BaseException:
            if compiling is not None:
                compiling.stop()
            raise
        precompiled = compiling.finish() if compiling is not None else None
        pipeline = cls(
            config,
            device=chosen,
            dtype=dtype,
            high_noise=high,
            low_noise=low,
            vae=vae,
            text_encoder=text_encoder,
            memory_policy=memory_policy,
            memory_plan=plan,
        )
        # LoRAs live beside the weights (inference/weights.md), also for seeded-weight models such as tiny.
        pipeline.loras = lora.LoraLibrary(Path(weights_dir) / "loras" if weights_dir else None)
        pipeline.precompiled = precompiled
        return pipeline

    def warm_up(self, resolutions: list[str] | None = None) -> dict[str, float]:
        """One job of one step per resolution (default: all of the model's) at the default length, so Triton
        compiles its kernels and cuDNN tunes the VAE's convolutions (per shape: the VAE's chunk shapes and its
        whole-length first layers depend on the length) before the first real job, which would otherwise pay for
        all of it (bench/README.md). One step runs one expert, and only its first KERNEL_BLOCKS blocks: the other
        blocks and the other expert run the same kernels.
        PyTorch keeps cuDNN's tuned plans per thread: call this in the thread that will run the jobs.
        Returns the seconds per resolution."""
        seconds: dict[str, float] = {}
        with contextlib.ExitStack() as truncated:
            for expert in self.experts.values():
                truncated.enter_context(expert.first_blocks(KERNEL_BLOCKS))
            for resolution in resolutions or list(self.config.resolutions):
                width, height = self.config.resolutions[resolution]
                request = GenerationRequest(
                    image=Image.new("RGB", (width, height), (128, 128, 128)), prompt="warm-up", seed=0, num_steps=1,
                    resolution=resolution, adaptive_resolution=False,
                )
                start = time.perf_counter()
                self.generate(request)
                seconds[resolution] = time.perf_counter() - start
        return seconds

    @torch.no_grad()
    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        should_cancel: CancelHook | None = None,
        frame_sink: FrameSink | None = None,
    ) -> GenerationResult:
        """Run one job. Progress events name the stage running now: one as each stage starts, then one per
        denoising step and per VAE chunk (encode and decode), with a non-decreasing overall fraction ending at 1.0
        with stage "done".

        With `frame_sink`, each decoded chunk's uint8 frames go to it, in order, while later chunks still decode
        (the result's frames are the same either way); the "decode" timing then includes that hand-off and
        "decode_encoder_wait" (a part of "decode", not a stage of its own) says how much of it the sink took."""
        resolved = resolve_request(
            self.config,
            seed=request.seed,
            num_steps=request.num_steps,
            resolution=request.resolution,
            num_frames=request.num_frames,
        )
        check_resize_mode(request.resize_mode)
        lora_paths = self._lora_paths_for(lora.check_choices(request.loras))
        image = load_image(request.image)
        width, height = target_size(self.config, image.size, resolved.resolution, request.adaptive_resolution)
        pixels = preprocess_image(image, width, height, request.resize_mode)

        tracker = _Progress(progress, should_cancel)
        timer = _Timer(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        tracker.check_cancel("text encoding")
        tracker.stage_started("text_encode")
        with timer.stage("text_encode"):
            context = self._encode_text(request.prompt)
        tracker.stage_finished("text_encode")

        tracker.check_cancel("image encoding")
        tracker.stage_started("image_encode")
        with timer.stage("image_encode"):
            condition = self._encode_image(
                pixels, resolved.num_frames, on_chunk=lambda done, total: tracker.advanced("image_encode", done / total))
        tracker.stage_finished("image_encode")

        tracker.check_cancel("denoising")
        tracker.stage_started("denoise", step=0, total_steps=resolved.num_steps)
        with timer.stage("denoise"), lora.applied(lora_paths["high"]), lora.applied(lora_paths["low"]):
            latent = self._denoise(condition, context, resolved, ode=request.ode, tracker=tracker)
        if self.memory_plan.experts_streamed:
            # Host-to-device copy time of the streamed blocks (overlapped with compute, so not added to the total).
            timer.timings["denoise_weights_copy"] = sum(e.copy_seconds() for e in self._experts.values())

        tracker.check_cancel("decoding")
        tracker.stage_started("decode")
        decoded_frames = 1 + self.config.vae.temporal_stride * (latent.shape[2] - 1)
        decoded = 0

        def decoded_chunk(count: int) -> None:
            nonlocal decoded
            decoded += count
            tracker.advanced("decode", decoded / decoded_frames)

        if frame_sink is None:
            with timer.stage("decode"):
                video = self.vae.decode(latent.to(self.dtype), chunk_latents=VAE_CHUNK_LATENTS,
                                        on_chunk=lambda part: decoded_chunk(part.shape[2]))
            tracker.stage_finished("decode")
            frames = frames_to_uint8(video[0])
        else:
            with timer.stage("decode"):
                frames, sink_seconds = self._decode_streaming(latent, frame_sink, decoded_chunk)
            timer.timings["decode_encoder_wait"] = sink_seconds
            tracker.stage_finished("decode")
        peak = int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None
        tracker.finished()
        return GenerationResult(
            frames=frames,
            fps=self.config.fps,
            timings=timer.timings,
            peak_memory_bytes=peak,
            device_name=self.device_name,
        )

    def _lora_paths_for(self, choices: list[lora.LoraChoice]) -> dict[str, dict[nn.Module, Any]]:
        """Each expert's low-rank paths for these LoRAs, built on the device once and kept for the next job that
        asks for the same set (the experts' own weights are never changed)."""
        key = tuple(choices)
        if self._lora_paths is not None and self._lora_paths[0] == key:
            return self._lora_paths[1]
        self._lora_paths = None  # free the previous set's device copies before building the next
        loaded = [(self.loras.expert_pairs(choice.name), choice.strength) for choice in choices]
        paths = {
            expert: lora.build_paths(self._experts[expert].module, [(pairs[expert], s) for pairs, s in loaded],
                                     self.device, self.dtype)
            for expert in ("high", "low")
        }
        self._lora_paths = (key, paths)
        return paths

    def _decode_streaming(self, latent: torch.Tensor, frame_sink: FrameSink,
                          on_decoded: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
        """Decode, giving each chunk's uint8 frames to `frame_sink` as it comes (and their count to `on_decoded`).
        Returns all the frames and the seconds spent inside the sink (an encoder slower than the decode makes it
        wait there)."""
        num_frames = 1 + self.config.vae.temporal_stride * (latent.shape[2] - 1)
        frames: np.ndarray | None = None
        filled = 0
        sink_seconds = 0.0

        def on_chunk(chunk: torch.Tensor) -> None:
            nonlocal frames, filled, sink_seconds
            count, height, width = chunk.shape[2:5]
            if frames is None:
                # Each chunk is copied off the GPU once, straight into its place in the result: no second
                # full-size uint8 copy on the GPU or concatenation on the host (224 MB for 81 frames at 720p).
                frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
            if filled + count > num_frames:
                raise RuntimeError(f"the VAE decoded more than the {num_frames} frames its latents hold")
            part = frames_to_uint8_into(chunk[0], frames[filled : filled + count])
            filled += count
            start = time.perf_counter()
            frame_sink(part)
            sink_seconds += time.perf_counter() - start
            if on_decoded is not None:
                on_decoded(count)

        # decode's returned video is dropped at once: the uint8 frames filled above are the result.
        self.vae.decode(latent.to(self.dtype), chunk_latents=VAE_CHUNK_LATENTS, on_chunk=on_chunk)
        if frames is None or filled != num_frames:
            raise RuntimeError(f"the VAE decoded {filled} frames, expected {num_frames}")
        return frames, sink_seconds

    def _encode_text(self, prompt: str) -> torch.Tensor:
        if self._text is not None:
            self._text.ready()
        try:
            context = self.text_encoder.encode([prompt])  # cleans the prompt itself
        finally:
            if self._text is not None:
                self._text.park()
        return context.to(device=self.device, dtype=self.dtype)

    def _encode_image(self, pixels: torch.Tensor, num_frames: int,
                      on_chunk: Callable[[int, int], None] | None = None) -> torch.Tensor:
        return image_condition(self.vae, pixels, num_frames, device=self.device, dtype=self.dtype, on_chunk=on_chunk)

    def _denoise(
        self,
        condition: torch.Tensor,
        context: torch.Tensor,
        resolved: ResolvedRequest,
        *,
        ode: bool,
        tracker: _Progress,
    ) -> torch.Tensor:
        latent_shape = (1, self.config.dit.out_dim, *condition.shape[2:])

        def denoiser(which: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            other = "low" if which == "high" else "high"

            def velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
                # Offloaded experts: the idle one leaves before the needed one arrives, so only one is on the GPU.
                self._experts[other].park()
                network = self._experts[which].ready()
                return network(torch.cat([x, condition], dim=1), timestep, context)

            return velocity

        try:
            with self._denoising():
                latent = sample(
                    denoiser("high"),
                    denoiser("low"),
                    latent_shape,
                    seed=resolved.seed,
                    num_steps=resolved.num_steps,
                    sigma_max=self.config.sampler.sigma_max,
                    boundary=self.config.sampler.boundary,
                    ode=ode,
                    device=self.device,
                    dtype=self.dtype,
                    on_step=tracker.step_finished,
                    should_cancel=tracker.should_cancel,
                )
        finally:
            # The next job starts with the high-noise expert: bring it back while this one decodes.
            self._experts["low"].park()
            self._experts["high"].fetch()
        return latent

    def _denoising(self) -> contextlib.AbstractContextManager[None]:
        """Context of the denoising steps: none here; a parallel pipeline splits the experts' attention over its
        ranks (inference.parallel.pipeline)."""
        return contextlib.nullcontext()
