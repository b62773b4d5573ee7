"""Model configurations: the full-size Wan2.2-I2V-A14B and the toy-size `tiny` that shares every code path.

These dataclasses are the contract between the DiT, VAE, text encoder, sampler and pipeline modules.
Numbers for the full-size model come from ../shared/docs/WAN22_I2V_SPEC.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WAN_VAE_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN_VAE_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclass(frozen=True)
class DiTConfig:
    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 36
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # SLA as the TurboDiffusion checkpoints were trained (spec section 3).
    sla_topk: float = 0.1
    sla_block_q: int = 128
    sla_block_k: int = 64

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class VAEConfig:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latent_mean: tuple[float, ...] = WAN_VAE_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN_VAE_LATENT_STD
    temporal_stride: int = 4
    spatial_stride: int = 8


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 256_384
    dim: int = 4096
    ffn_dim: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    text_len: int = 512


@dataclass(frozen=True)
class SamplerConfig:
    sigma_max: float = 200.0
    boundary: float = 0.9
    default_steps: int = 4
    max_steps: int = 4


@dataclass(frozen=True)
class ModelConfig:
    name: str
    dit: DiTConfig
    vae: VAEConfig
    text: TextEncoderConfig
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # (width, height) of each named resolution in landscape; portrait swaps, adaptive keeps the area.
    resolutions: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"480p": (832, 480), "720p": (1280, 720)}
    )
    default_resolution: str = "720p"
    default_frames: int = 81
    max_frames: int = 161
    fps: int = 16
    # True: weights are made at load time from a fixed seed (no files needed).
    random_weights: bool = False
    # Files expected under the weights folder (TURBO_MODEL_DIR); see inference/weights.md.
    high_noise_file: str = "TurboWan2.2-I2V-A14B-high-720P-quant.pth"
    low_noise_file: str = "TurboWan2.2-I2V-A14B-low-720P-quant.pth"
    vae_file: str = "Wan2.1_VAE.pth"
    text_encoder_file: str = "models_t5_umt5-xxl-enc-bf16.pth"
    tokenizer_dir: str = "google/umt5-xxl"


A14B = ModelConfig(
    name="wan2.2-i2v-a14b",
    dit=DiTConfig(),
    vae=VAEConfig(),
    text=TextEncoderConfig(),
)

# The real architecture at toy size: every code path of A14B, seeded random weights, seconds on a laptop CPU.
# 4 heads of 16 (the smallest head the GPU kernels take) so the sequence-parallel tests can split them 2 and 4 ways.
TINY = ModelConfig(
    name="tiny",
    dit=DiTConfig(
        dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_dim=32, text_len=64,
        sla_block_q=32, sla_block_k=16,
    ),
    vae=VAEConfig(base_dim=8),
    text=TextEncoderConfig(vocab_size=512, dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_len=64),
    resolutions={"480p": (160, 96), "720p": (256, 144)},
    default_resolution="480p",
    default_frames=17,
    random_weights=True,
)

MODELS: dict[str, ModelConfig] = {A14B.name: A14B, TINY.name: TINY}


def get_config(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
