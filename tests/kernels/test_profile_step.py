"""The profile benchmark's kernel grouping (the GPU part runs on the device: bench/README.md)."""

from __future__ import annotations

import pytest

from bench.profile_step import group_of


@pytest.mark.parametrize(
    "name,group",
    [
        ("_sla_sparse_gluon_kernel", "sla sparse"),
        ("_linear_kv_pool_kernel", "sla side (kv, pooling)"),
        ("void at::native::mbtopk::gatherTopK<float, unsigned int, 2>(...)", "block map (score, topk, sort)"),
        ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x64x8", "block map (score, topk, sort)"),
        ("nvjet_sm90_qqtst_128x128_128x6_1x2_h_bz_ovscale_bias_TNT", "GEMMs (cuBLAS)"),
        ("_ln_modulate_kernel", "norms / quantize / residual / rope"),
        ("_quantize_row_once_kernel", "norms / quantize / residual / rope"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "attention (cross, SDPA)"),
        ("void at::native::elementwise_kernel<128, 2, add>", "other (elementwise, copies)"),
    ],
)
def test_kernel_names_fall_into_their_groups(name, group):
    assert group_of(name) == group
