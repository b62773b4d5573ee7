"""Wan2.2-I2V-A14B in pure PyTorch (no Django): configs, DiT, VAE, text encoder, sampler, pipeline, CLI."""
