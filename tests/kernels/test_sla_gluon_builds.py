"""The Gluon SLA kernel builds for the H100 (sm_90) with this project's Triton, on a machine without a GPU.

Gluon is experimental and its API moves between Triton releases (3.9 renamed the TMA load the kernel first used):
a build failure would not break jobs (sla_triton falls back to the TMA kernel with a warning) but would silently
cost the speed-up, so CI compiles the kernel ahead of time for sm_90, as the H100 would, and checks that it uses the
instructions it was written for and fits a CTA's shared memory. Running it is the GPU tests' part.

The build runs in a fresh Python: once this test session has imported Triton for its interpreter (the CPU kernel
tests), Triton's language functions stay wrapped for it and no kernel can be compiled in this process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

H100_SHARED_BYTES = 232448  # the most shared memory one CTA may hold on sm_90
REPO = Path(__file__).resolve().parents[2]


def build_report(pv_fp8: bool) -> dict[str, object]:
    """Compile the kernel for sm_90 at the model's layout (fused q/k/v views, bf16; with `pv_fp8`, V as the fp8
    V^T of sla_triton.transpose_v_fp8) and describe the result."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver
    from triton.runtime import driver as triton_driver

    class Sm90WithoutGpu(CudaDriver):
        """Triton's CUDA driver answering as an H100 without touching CUDA: enough to compile, never to launch."""

        def __init__(self) -> None:  # CudaDriver.__init__ loads libcuda
            pass

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

    triton_driver.set_active(Sm90WithoutGpu())
    from turbokernels import sla_gluon, sla_triton

    heads, length, d = 4, 4000, 128
    qkv = torch.zeros(1, length, 3, heads, d, dtype=torch.bfloat16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    maps = [sla_triton._tma_layout(x) for x in (q, k, v)]
    descs = [sla_gluon.descriptor(x, rows, m) for x, rows, m in zip((q, k), (128, 64), maps, strict=False)]
    descs.append(sla_gluon.descriptor(v, 64, maps[2]))
    v_map = maps[2][3:]
    if pv_fp8:
        vt = torch.zeros(heads * d, math.ceil(length / 64) * 64, dtype=torch.float8_e4m3fn)
        descs[2] = sla_gluon.transposed_v_descriptor(vt, d, 64)
        v_map = (heads * d, d, 0)
    m_desc = sla_gluon.descriptor(torch.zeros(heads * d, d, dtype=torch.bfloat16), d, (heads * d, d, d, 0, 0, 0))
    n_q, n_sel = math.ceil(length / 128), 6
    lut = torch.zeros(1, heads, n_q, n_sel, dtype=torch.int32)
    out = torch.empty_like(q)
    compiled = sla_gluon._sla_sparse_gluon_kernel.warmup(
        *descs, m_desc, out, lut, torch.zeros(heads, d), torch.zeros(d), torch.zeros(heads, d),
        length, heads, n_sel, 0.1, *maps[0][3:], *maps[1][3:], *v_map, *out.stride(), lut.stride(1), lut.stride(2),
        BLOCK_M=128, BLOCK_KB=64, HEAD_DIM=d, K_STAGES=3, V_STAGES=2, CONSUMER_REGS=240, FUSE_LINEAR=True,
        PV_FP8=pv_fp8, num_warps=4, grid=(n_q, heads),
    )
    ptx = compiled.asm["ptx"]
    return {
        "have_gluon": sla_gluon.HAVE_GLUON,
        "wgmma": "wgmma.mma_async" in ptx,
        "wgmma_e4m3": any("wgmma.mma_async" in line and "e4m3" in line for line in ptx.splitlines()),
        "tma": "cp.async.bulk.tensor" in ptx,
        "setmaxnreg": "setmaxnreg" in ptx,
        "shared": compiled.metadata.shared,
    }


@pytest.mark.parametrize("pv_fp8", [False, True], ids=["bf16", "pv_fp8"])
def test_gluon_sla_kernel_compiles_for_sm90(tmp_path, pv_fp8):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a real build: Triton's cache key may miss a renamed builtin
    code = ("import json; from tests.kernels.test_sla_gluon_builds import build_report; "
            f"print(json.dumps(build_report({pv_fp8})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["have_gluon"]  # the pinned Triton ships Gluon's Hopper API
    assert report["wgmma"]  # Hopper's warpgroup products, not a slower path
    assert report["wgmma_e4m3"] == pv_fp8  # P.V on fp8 tensor cores exactly when asked
    assert report["tma"]  # TMA loads
    assert report["setmaxnreg"]  # the producer/consumer register split of the warp specialisation
    # q, K and V stages and the linear-branch matrix
    assert 200 * 1024 < report["shared"] <= H100_SHARED_BYTES
