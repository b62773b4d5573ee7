"""The I2V pipeline end to end with the tiny model on CPU, plus its memory planning and weight checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.configs import A14B, TINY
from inference.dit import KERNEL_BLOCKS
from inference.image import preprocess_image, target_size
from inference.pipeline import (
    VAE_CHUNK_LATENTS,
    HostParking,
    I2VPipeline,
    MemoryPlan,
    estimate_weight_bytes,
    module_bytes,
    plan_memory,
    resolve_linears,
    resolve_request,
    usable_gpu_bytes,
)
from inference.types import (
    GenerationCanceled,
    GenerationRequest,
    GenerationResult,
    InferenceInputError,
    ProgressEvent,
    WeightsError,
)

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
GiB = 2**30


def sample_image() -> Image.Image:
    path = SAMPLES / "i2v_input_0.jpg"
    if path.is_file():
        with Image.open(path) as img:
            return img.convert("RGB")
    # A smooth gradient with a bright square, so the image latent is not constant.
    y, x = np.mgrid[0:120, 0:200]
    pixels = np.stack([x * 255 // 199, y * 255 // 119, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    pixels[40:80, 80:120] = 250
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="module")
def pipeline() -> I2VPipeline:
    return I2VPipeline.load("tiny", device="cpu")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return sample_image()


def _request(image: Image.Image, **overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {"image": image, "prompt": "a red fox runs through fresh snow", "seed": 7}
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def test_tiny_generates_default_frames_and_size(pipeline: I2VPipeline, image: Image.Image) -> None:
    width, height = target_size(TINY, image.size, "480p", True)
    result = pipeline.generate(_request(image))
    assert isinstance(result, GenerationResult)
    assert result.frames.dtype == np.uint8
    assert result.frames.shape == (17, height, width, 3)  # 17 frames: the tiny model's default
    assert (result.num_frames, result.width, result.height) == (17, width, height)
    assert result.fps == TINY.fps
    assert result.device_name == "cpu" == pipeline.device_name
    assert result.peak_memory_bytes is None
    assert set(result.timings) == {"text_encode", "image_encode", "denoise", "decode"}
    assert all(seconds >= 0 for seconds in result.timings.values())
    assert result.frames.std() > 0  # not a blank video


def test_frame_sink_gets_exactly_the_result_frames_chunk_by_chunk(pipeline: I2VPipeline, image: Image.Image) -> None:
    plain = pipeline.generate(_request(image, num_frames=13, num_steps=2))
    received: list[np.ndarray] = []
    events: list[ProgressEvent] = []

    def sink(frames: np.ndarray) -> None:
        # Each chunk arrives during the decode, as uint8 [n, H, W, 3]: after the decode's start event and one
        # progress event per chunk before it.
        assert sum(event.stage == "decode" for event in events) == len(received) + 1
        received.append(frames.copy())

    streamed = pipeline.generate(_request(image, num_frames=13, num_steps=2), progress=events.append,
                                 frame_sink=sink)
    # One call per VAE chunk: latent frame 0 decodes to 1 frame, every later one to temporal_stride frames.
    stride, latents = TINY.vae.temporal_stride, 1 + 12 // TINY.vae.temporal_stride
    expected = [stride * min(VAE_CHUNK_LATENTS, latents - i) - (stride - 1 if i == 0 else 0)
                for i in range(0, latents, VAE_CHUNK_LATENTS)]
    assert [len(chunk) for chunk in received] == expected and sum(expected) == 13
    assert all(chunk.dtype == np.uint8 and chunk.shape[1:] == streamed.frames.shape[1:] for chunk in received)
    assert np.array_equal(np.concatenate(received), streamed.frames)
    assert np.array_equal(streamed.frames, plain.frames)  # streaming changes nothing in the result
    assert set(streamed.timings) == {"text_encode", "image_encode", "denoise", "decode", "decode_encoder_wait"}
    assert 0 <= streamed.timings["decode_encoder_wait"] <= streamed.timings["decode"]
    assert events[-1] == ProgressEvent(stage="done", progress=1.0)
    decode = [event.fraction for event in events if event.stage == "decode"]
    assert decode == sorted(decode) and decode[0] == 0.0 and decode[-1] == 1.0 and len(decode) == len(expected) + 1


def test_a_failing_frame_sink_stops_the_job(pipeline: I2VPipeline, image: Image.Image) -> None:
    def sink(frames: np.ndarray) -> None:
        raise OSError("the encoder is gone")

    with pytest.raises(OSError, match="the encoder is gone"):
        pipeline.generate(_request(image, num_frames=5, num_steps=1), frame_sink=sink)
    assert pipeline.generate(_request(image, num_frames=5, num_steps=1)).num_frames == 5  # and it still works


def test_fixed_and_adaptive_sizes_follow_image_shape(pipeline: I2VPipeline) -> None:
    wide = Image.new("RGB", (320, 180), (200, 40, 40))
    tall = Image.new("RGB", (180, 320), (40, 200, 40))
    assert pipeline.generate(_request(wide, num_frames=1, num_steps=1, adaptive_resolution=False)).frames.shape == (
        1, 96, 160, 3,
    )  # fmt: skip
    assert pipeline.generate(_request(tall, num_frames=1, num_steps=1, adaptive_resolution=False)).frames.shape == (
        1, 160, 96, 3,
    )  # fmt: skip
    result = pipeline.generate(_request(tall, num_frames=1, num_steps=1))
    width, height = target_size(TINY, tall.size, "480p", True)
    assert result.frames.shape == (1, height, width, 3)
    assert height > width


def test_progress_reports_every_stage_and_step_monotonically(pipeline: I2VPipeline, image: Image.Image) -> None:
    events: list[ProgressEvent] = []
    pipeline.generate(_request(image, num_steps=3, num_frames=1), progress=events.append)
    stages = [e.stage for e in events]
    # Each stage announces itself as it starts; the VAE stages then report each chunk (one frame here: one chunk).
    assert stages == ["text_encode", "image_encode", "image_encode", "denoise", "denoise", "denoise", "denoise",
                      "decode", "decode", "done"]
    assert [(e.step, e.total_steps) for e in events if e.stage == "denoise"] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert [e.stage_fraction() for e in events if e.stage == "denoise"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    progress = [e.progress for e in events]
    assert progress == sorted(progress)
    assert progress[0] == 0.0 and progress[-1] == 1.0


def test_progress_names_the_stage_that_is_running(pipeline: I2VPipeline, image: Image.Image,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The last event seen when a stage's work begins names that stage (it used to name the one before)."""
    events: list[ProgressEvent] = []
    seen: dict[str, str] = {}

    def spy(name: str, original):
        def run(*args, **kwargs):
            seen[name] = events[-1].stage
            return original(*args, **kwargs)
        return run

    monkeypatch.setattr(pipeline, "_encode_text", spy("text_encode", pipeline._encode_text))
    monkeypatch.setattr(pipeline, "_encode_image", spy("image_encode", pipeline._encode_image))
    monkeypatch.setattr(pipeline, "_denoise", spy("denoise", pipeline._denoise))
    monkeypatch.setattr(pipeline.vae, "decode", spy("decode", pipeline.vae.decode))
    pipeline.generate(_request(image, num_steps=1, num_frames=5), progress=events.append)
    assert seen == {"text_encode": "text_encode", "image_encode": "image_encode", "denoise": "denoise",
                    "decode": "decode"}


def test_progress_moves_during_vae_encode_and_decode(pipeline: I2VPipeline, image: Image.Image) -> None:
    events: list[ProgressEvent] = []
    pipeline.generate(_request(image, num_steps=1, num_frames=13), progress=events.append)
    latents = 1 + 12 // TINY.vae.temporal_stride
    for stage in ("image_encode", "decode"):
        inside = [e for e in events if e.stage == stage]
        fractions = [e.fraction for e in inside]
        # The start, then one event per chunk, each further along, ending with the whole stage done.
        assert fractions[0] == 0.0 and fractions[-1] == 1.0, stage
        assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions) >= 1 + latents // 2, stage
        assert [e.progress for e in inside] == sorted(e.progress for e in inside)
        assert inside[-1].progress > inside[0].progress, stage


def test_same_seed_same_frames_different_seed_different_frames(pipeline: I2VPipeline, image: Image.Image) -> None:
    first = pipeline.generate(_request(image, seed=123, num_frames=1, num_steps=2)).frames
    again = pipeline.generate(_request(image, seed=123, num_frames=1, num_steps=2)).frames
    other = pipeline.generate(_request(image, seed=124, num_frames=1, num_steps=2)).frames
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_ode_and_sde_give_different_videos(pipeline: I2VPipeline, image: Image.Image) -> None:
    sde = pipeline.generate(_request(image, num_frames=1, num_steps=2)).frames
    ode = pipeline.generate(_request(image, num_frames=1, num_steps=2, ode=True)).frames
    assert not np.array_equal(sde, ode)


def test_network_input_is_noise_mask_then_image_latent(pipeline: I2VPipeline, image: Image.Image) -> None:
    seen: list[torch.Tensor] = []
    high = pipeline._experts["high"].module
    handle = high.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        pipeline.generate(_request(image, num_frames=5, num_steps=1))
    finally:
        handle.remove()
    assert len(seen) == 1
    x = seen[0]
    width, height = target_size(TINY, image.size, "480p", True)
    assert x.shape == (1, 36, 2, height // 8, width // 8)  # 5 frames -> 2 latent frames
    mask = x[:, 16:20]
    assert torch.all(mask[:, :, 0] == 1) and torch.all(mask[:, :, 1:] == 0)

    pixels = preprocess_image(image, width, height)
    video = torch.zeros(1, 3, 5, height, width)
    video[0, :, 0] = pixels
    torch.testing.assert_close(x[:, 20:], pipeline.vae.encode(video).to(x.dtype))


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_resize_mode_reaches_the_image_latent(pipeline: I2VPipeline, image: Image.Image, mode: str) -> None:
    seen: list[torch.Tensor] = []
    high = pipeline._experts["high"].module
    handle = high.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    image = image.crop((0, 0, 200, 80))  # 5:2 into the fixed 160x96 (5:3): the three modes differ
    try:
        pipeline.generate(_request(image, num_frames=1, num_steps=1, adaptive_resolution=False, resize_mode=mode))
    finally:
        handle.remove()
    video = preprocess_image(image, 160, 96, mode)[None, :, None]
    torch.testing.assert_close(seen[0][:, 20:], pipeline.vae.encode(video).to(seen[0].dtype))
    if mode != "stretch":
        other = preprocess_image(image, 160, 96, "stretch")[None, :, None]
        assert not torch.allclose(seen[0][:, 20:], pipeline.vae.encode(other).to(seen[0].dtype))


def test_unknown_resize_mode_is_refused_before_work(pipeline: I2VPipeline, image: Image.Image) -> None:
    events: list[ProgressEvent] = []
    with pytest.raises(InferenceInputError, match="resize_mode 'fill'"):
        pipeline.generate(_request(image, resize_mode="fill"), progress=events.append)
    assert events == []


def test_cancellation_between_steps_and_pipeline_survives(pipeline: I2VPipeline, image: Image.Image) -> None:
    events: list[ProgressEvent] = []

    def cancel_after_first_step() -> bool:
        return any(e.stage == "denoise" and e.step for e in events)

    with pytest.raises(GenerationCanceled):
        pipeline.generate(_request(image, num_frames=1), progress=events.append, should_cancel=cancel_after_first_step)
    assert [e.step for e in events if e.stage == "denoise"] == [0, 1]
    assert "decode" not in [e.stage for e in events]
    assert pipeline.generate(_request(image, num_frames=1, num_steps=1)).num_frames == 1


def test_cancel_before_anything_runs(pipeline: I2VPipeline, image: Image.Image) -> None:
    events: list[ProgressEvent] = []
    with pytest.raises(GenerationCanceled, match="text encoding"):
        pipeline.generate(_request(image), progress=events.append, should_cancel=lambda: True)
    assert events == []


@pytest.mark.parametrize(("field", "value"), [("num_frames", 18), ("num_frames", 0), ("num_frames", 165)])
def test_bad_frame_counts_are_named(pipeline: I2VPipeline, image: Image.Image, field: str, value: int) -> None:
    with pytest.raises(InferenceInputError, match=str(value)):
        pipeline.generate(_request(image, **{field: value}))


def test_unknown_resolution_is_named(pipeline: I2VPipeline, image: Image.Image) -> None:
    with pytest.raises(InferenceInputError, match="1080p"):
        pipeline.generate(_request(image, resolution="1080p"))


@pytest.mark.parametrize("steps", [0, 5])
def test_bad_step_count_is_named(pipeline: I2VPipeline, image: Image.Image, steps: int) -> None:
    with pytest.raises(InferenceInputError, match=f"got {steps}"):
        pipeline.generate(_request(image, num_steps=steps))


def test_resolve_request_applies_defaults() -> None:
    resolved = resolve_request(TINY, seed=3, num_steps=2, resolution=None, num_frames=None)
    assert (resolved.resolution, resolved.num_frames, resolved.num_steps, resolved.seed) == ("480p", 17, 2, 3)
    with pytest.raises(InferenceInputError, match="-1"):
        resolve_request(TINY, seed=-1, num_steps=2, resolution=None, num_frames=None)


def test_offload_policy_matches_resident_output(pipeline: I2VPipeline, image: Image.Image) -> None:
    offloaded = I2VPipeline.load("tiny", device="cpu", memory_policy="offload")
    assert offloaded.memory_plan == MemoryPlan(experts_resident=False, text_encoder_resident=False)
    request = _request(image, num_frames=1, num_steps=4)
    assert np.array_equal(offloaded.generate(request).frames, pipeline.generate(request).frames)


def test_stream_policy_matches_resident_output(pipeline: I2VPipeline, image: Image.Image) -> None:
    streamed = I2VPipeline.load("tiny", device="cpu", memory_policy="stream")
    assert streamed.memory_plan == MemoryPlan(experts_resident=False, text_encoder_resident=False,
                                              experts_streamed=True)
    request = _request(image, num_frames=1, num_steps=4)
    result = streamed.generate(request)
    assert np.array_equal(result.frames, pipeline.generate(request).frames)
    # Between jobs no expert's blocks are on the device beyond the high-noise expert's prefetched first ones.
    high, low = (streamed._experts[name].streamer for name in ("high", "low"))
    assert low.blocks_on_device() == 0
    assert high.blocks_on_device() == min(high.ahead + 1, len(high.blocks))
    # Every expert that ran copied all of its blocks in at least once.
    assert high.bytes_copied >= high.host_bytes and low.bytes_copied >= low.host_bytes
    assert result.timings["denoise_weights_copy"] >= 0


def test_unknown_model_attention_and_policy_are_named() -> None:
    with pytest.raises(InferenceInputError, match="nope"):
        I2VPipeline.load("nope")
    with pytest.raises(InferenceInputError, match="flash3"):
        I2VPipeline.load("tiny", device="cpu", attention="flash3")
    with pytest.raises(InferenceInputError, match="sometimes"):
        I2VPipeline.load("tiny", device="cpu", memory_policy="sometimes")


def test_full_model_without_weights_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        I2VPipeline.load(A14B.name, tmp_path, device="cpu")
    message = str(caught.value)
    for name in (A14B.high_noise_file, A14B.low_noise_file, A14B.vae_file, A14B.text_encoder_file):
        assert name in message


def test_full_model_without_weights_folder_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURBO_MODEL_DIR", raising=False)
    with pytest.raises(WeightsError, match="TURBO_MODEL_DIR"):
        I2VPipeline.load(A14B.name, device="cpu")


def test_host_parking_swaps_storage_and_keeps_values() -> None:
    module = torch.nn.Linear(4, 3)
    original = module.weight.detach().clone()
    parking = HostParking(module, torch.device("cpu"))
    host_ptr = module.weight.data_ptr()
    parking.ready()
    assert module.weight.data_ptr() != host_ptr
    assert torch.equal(module.weight, original)
    parking.park()
    assert module.weight.data_ptr() == host_ptr
    assert torch.equal(module(torch.ones(1, 4)), torch.nn.functional.linear(torch.ones(1, 4), original, module.bias))


EXPERT, TEXT, VAE, HEADROOM = 28 * GiB, 11 * GiB, GiB // 4, 10 * GiB


@pytest.mark.parametrize(
    ("policy", "on_cuda", "free", "expected"),
    [
        ("auto", True, 140 * GiB, MemoryPlan(experts_resident=True, text_encoder_resident=True)),
        ("auto", True, 75 * GiB, MemoryPlan(experts_resident=True, text_encoder_resident=False)),
        ("auto", True, 60 * GiB, MemoryPlan(experts_resident=False, text_encoder_resident=False)),
        ("auto", False, 0, MemoryPlan(experts_resident=True, text_encoder_resident=True)),
        ("resident", True, 1 * GiB, MemoryPlan(experts_resident=True, text_encoder_resident=True)),
        ("offload", True, 500 * GiB, MemoryPlan(experts_resident=False, text_encoder_resident=False)),
        # One expert with the VAE and working memory needs 38.25 GiB: below that, blocks stream.
        ("auto", True, 39 * GiB, MemoryPlan(experts_resident=False, text_encoder_resident=False)),
        ("auto", True, 24 * GiB, MemoryPlan(experts_resident=False, text_encoder_resident=False,
                                           experts_streamed=True)),
        ("stream", True, 500 * GiB, MemoryPlan(experts_resident=False, text_encoder_resident=False,
                                              experts_streamed=True)),
    ],
)
def test_memory_plan(policy: str, on_cuda: bool, free: int, expected: MemoryPlan) -> None:
    plan = plan_memory(
        policy,
        on_cuda=on_cuda,
        free_bytes=free,
        expert_bytes=EXPERT,
        text_encoder_bytes=TEXT,
        vae_bytes=VAE,
        headroom_bytes=HEADROOM,
    )
    assert plan == expected


@pytest.mark.parametrize(("fraction", "reserved", "expected"), [(1.0, 30 * GiB, 100 * GiB),
                                                                (0.2, 20 * GiB, 8 * GiB),
                                                                (0.1, 20 * GiB, 0)])
def test_usable_gpu_bytes_honours_the_process_memory_fraction(
    monkeypatch: pytest.MonkeyPatch, fraction: float, reserved: int, expected: int
) -> None:
    """A 140 GiB card with 100 GiB free: a per-process cap (as on a smaller card) leaves cap - reserved."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (100 * GiB, 140 * GiB))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda index: fraction)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: reserved)
    assert usable_gpu_bytes(torch.device("cuda", 0)) == expected


def test_weight_estimate_matches_loaded_modules(pipeline: I2VPipeline) -> None:
    sizes = estimate_weight_bytes(TINY, dict.fromkeys(("high", "low", "text", "vae")), torch.float32)
    assert sizes["expert"] == module_bytes(pipeline._experts["high"].module)
    assert sizes["text"] == module_bytes(pipeline.text_encoder.model)
    assert sizes["vae"] == module_bytes(pipeline.vae)


def test_weight_estimate_uses_checkpoint_file_sizes(tmp_path: Path) -> None:
    high, text = tmp_path / "high.pth", tmp_path / "text.pth"
    high.write_bytes(b"x" * 3000)
    text.write_bytes(b"x" * 500)
    shards = tmp_path / "low_noise_model"
    shards.mkdir()
    (shards / "a.safetensors").write_bytes(b"x" * 2000)
    (shards / "b.safetensors").write_bytes(b"x" * 2000)
    sizes = estimate_weight_bytes(TINY, {"high": high, "low": shards, "text": text, "vae": None}, torch.bfloat16)
    assert (sizes["expert"], sizes["text"]) == (4000, 500)


def test_linear_mode_resolves_per_device():
    cpu = torch.device("cpu")
    assert resolve_linears("auto", cpu) == "native"
    assert resolve_linears("native", cpu) == "native"
    with pytest.raises(InferenceInputError, match="fp8 tensor cores"):
        resolve_linears("fp8", cpu)
    with pytest.raises(InferenceInputError, match="'int4'"):
        resolve_linears("int4", cpu)


def test_warm_up_runs_only_the_blocks_that_reach_every_kernel(monkeypatch):
    deeper = dataclasses.replace(TINY, dit=dataclasses.replace(TINY.dit, num_layers=KERNEL_BLOCKS + 2))
    monkeypatch.setattr("inference.pipeline.get_config", lambda name: deeper)
    pipe = I2VPipeline.load("tiny", device="cpu")
    ran: list[int] = []
    handles = []
    for expert in pipe.experts.values():
        handles.append(expert.register_forward_pre_hook(lambda *_: ran.append(0)))
        for block in expert.blocks:
            handles.append(block.register_forward_hook(lambda *_: ran.__setitem__(-1, ran[-1] + 1)))
    try:
        pipe.warm_up(["480p"])
        assert ran == [KERNEL_BLOCKS]  # one forward, through the first blocks only
        ran.clear()
        pipe.generate(GenerationRequest(image=sample_image(), prompt="a fox", seed=1, num_steps=2))
        assert ran == [KERNEL_BLOCKS + 2] * 2  # a job after it runs every block of both experts
    finally:
        for handle in handles:
            handle.remove()


def test_warm_up_runs_one_step_per_resolution_at_the_default_length(pipeline, monkeypatch):
    seen: list[GenerationRequest] = []
    experts: list[str] = []
    real_generate = pipeline.generate

    def recording_generate(request, *args, **kwargs):
        seen.append(request)
        result = real_generate(request, *args, **kwargs)
        assert (result.width, result.height) == TINY.resolutions[request.resolution]
        assert result.num_frames == TINY.default_frames  # the default length: every VAE shape of a real job
        return result

    monkeypatch.setattr(pipeline, "generate", recording_generate)
    handles = [
        pipeline._experts[name].module.register_forward_hook(lambda *_, name=name: experts.append(name))
        for name in ("high", "low")
    ]
    try:
        seconds = pipeline.warm_up()
    finally:
        for handle in handles:
            handle.remove()
    assert list(seconds) == list(TINY.resolutions) and all(s > 0 for s in seconds.values())
    assert [(r.resolution, r.num_frames, r.num_steps) for r in seen] == [(res, None, 1) for res in TINY.resolutions]
    assert experts == ["high", "high"]  # one forward per resolution: the experts share their kernels
    assert pipeline.warm_up(["720p"]).keys() == {"720p"}
