"""The non-GPU logic of bench/sla_sweep.py: variant selection, FLOP count, accuracy marks, and that every variant's
keyword arguments are accepted by the kernel (run under Triton's interpreter at a tiny shape)."""

from __future__ import annotations

import pytest
import torch

from bench import sla_sweep
from turbokernels import reference


def test_variant_table_is_sane():
    labels = [label for label, _ in sla_sweep.VARIANTS]
    assert len(set(labels)) == len(labels)
    # The first kernel comes first, every choice spelled out: the others are compared with it.
    assert sla_sweep.VARIANTS[0][1] == {"sparse_impl": "pointer", "side_impl": "separate"}
    assert all({"sparse_impl", "side_impl"} <= set(kwargs) for _, kwargs in sla_sweep.VARIANTS)
    assert len(sla_sweep.VARIANTS) + 2 <= 12  # + dense SDPA and the contiguous-layout row: the time budget


def test_select_variants_keeps_the_default():
    chosen = sla_sweep.select_variants(["fp8 P.V"], None)
    assert chosen[0] == sla_sweep.VARIANTS[0]
    assert all("fp8 P.V" in label for label, _ in chosen[1:]) and len(chosen) > 1
    skipped = sla_sweep.select_variants(None, ["tma"])
    assert [label for label, _ in skipped] == [
        "first kernel: pointer m128 bpi2 w8 s2", "pointer + fused side", "gluon wgmma pipeline + fused side",
        "gluon + fp8 P.V (approx.)",
    ]


def test_split_kwargs_and_flops():
    side, sparse = sla_sweep.split_kwargs({"side_impl": "fused", "sparse_impl": "tma", "num_stages": 3})
    assert side == {"side_impl": "fused"}
    assert sparse == {"sparse_impl": "tma", "num_stages": 3}
    # 720p: 1182 key blocks, 118 chosen: the 11.7 TFLOP of bench/README.md.
    assert sla_sweep.sparse_tflops(75_600) == pytest.approx(4 * 40 * 75_600 * 118 * 64 * 128 / 1e12)


def test_accuracy_marks():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 3, 50, 8, generator=gen)
    full = torch.randn(1, 40, 50, 8, generator=gen)
    full[:, sla_sweep.REF_HEADS] = ref
    good = sla_sweep.accuracy(full, ref, full)
    assert good["ok"] and good["cosine"] == pytest.approx(1.0) and good["rel_vs_default"] == 0.0
    bad = sla_sweep.accuracy(full, ref, full + 0.1)
    assert not bad["ok"]
    first = sla_sweep.accuracy(full, ref, None)
    assert first["ok"] and "rel_vs_default" not in first


@pytest.mark.parametrize("label,kwargs", sla_sweep.VARIANTS, ids=[v[0] for v in sla_sweep.VARIANTS])
def test_every_sweep_variant_runs_and_matches(interpreted_kernels, label, kwargs):
    sla = interpreted_kernels["sla_triton"]
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(1, 300, 3, 2, 16, generator=gen)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    w, b = torch.randn(16, 16, generator=gen) * 0.2, torch.randn(16, generator=gen) * 0.2
    out = sla.sla_attention(q, k, v, w, b, 0.4, sla_sweep.BLOCK_Q, sla_sweep.BLOCK_K, **kwargs)
    ref = reference.sla_attention(q, k, v, w, b, 0.4, sla_sweep.BLOCK_Q, sla_sweep.BLOCK_K)
    # fp8 P.V is Gluon-only, so under the interpreter every row (that one too) is the exact kernel.
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


def test_sweep_end_to_end_on_cpu(interpreted_kernels, monkeypatch, tmp_path, capsys):
    """The whole script at a tiny shape on CPU (interpreter, fp32, timing stubbed): rows, accuracy columns, the
    error path of a failing variant, and the JSON file."""
    import json

    monkeypatch.setattr(sla_sweep, "DEVICE", "cpu")
    monkeypatch.setattr(sla_sweep, "GRIDS", {"tiny": (1, 10, 30)})  # L = 300: partial query and key blocks
    monkeypatch.setattr(sla_sweep, "HEADS", 4)
    monkeypatch.setattr(sla_sweep, "HEAD_DIM", 16)
    monkeypatch.setattr(sla_sweep, "REF_HEADS", [0, 3])
    monkeypatch.setattr(sla_sweep, "bench_ms", lambda fn: (fn(), 1.0)[1])
    variants = [*sla_sweep.VARIANTS[:3], ("broken", {"sparse_impl": "nope"})]
    monkeypatch.setattr(sla_sweep, "VARIANTS", variants)
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["sla_sweep", "--res", "tiny"])
    sla_sweep.main()
    data = json.loads((tmp_path / sla_sweep.JSON_NAME).read_text())
    section = data["sla_tiny"]
    assert section["tma_supported"] and "aborted" not in section
    rows = {r["variant"]: r for r in section["rows"]}
    assert set(rows) == {"dense SDPA bf16", *(label for label, _ in variants), "default, contiguous (B,H,L,D)"}
    for label, _ in variants[:3]:
        assert rows[label]["ok"] and rows[label]["cosine"] > 0.99999, rows[label]
        assert rows[label]["sparse_ms"] == 1.0
    assert rows["tma bpi2 w8 s2"]["rel_vs_default"] < 1e-5
    assert "side_ms" in rows["pointer + fused side"]
    assert "sparse_impl" in rows["broken"]["error"]
    assert len(section["parts"]) == 11 and all("ms" in p for p in section["parts"])
    assert "first kernel: pointer" in capsys.readouterr().out
