"""One job across the GPUs of one host: sequence-parallel DiT (Ulysses), spatially split VAE, and the pipeline that
ties them together. Everything here talks through `torch.distributed` (NCCL on GPUs, gloo on CPUs for the tests);
with one process nothing here is used and the single-GPU code paths run unchanged.

- `group`: the process group of one job (rank, world, device), token and row splits, the collectives we use.
- `dit`: Ulysses all-to-all around each self-attention of a `WanDiT`.
- `vae`: encode and decode of `WanVAE` split into horizontal slabs with exact halos.
- `pipeline`: `ParallelI2VPipeline`, the I2V pipeline run by every rank of a group.
"""
