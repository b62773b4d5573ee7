"""The int8 tile quantizer rounds exactly like upstream's (TurboDiffusion ops/quant): x * (128 / amax) in fp32.

The expected integers come from an independent emulation in numpy float64: 128 / amax and x * multiplier are each
computed in float64 and rounded once to float32, which is the correctly rounded fp32 result (float64 carries more
than twice float32's precision, so the double rounding is innocuous), then rounded half to even. The values sit on
rounding boundaries: a few float32 steps around each (k + 1/2) / multiplier, where multiplying by 128 / amax and
dividing by amax / 128 disagree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbokernels import reference

TILE = 128


def _upstream_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy emulation of upstream's quantizer on a float32 array (independent of the torch reference)."""
    rows, cols = w.shape
    q = np.empty((rows, cols), dtype=np.int8)
    n_r, n_c = -(-rows // TILE), -(-cols // TILE)
    scale = np.empty((n_r, n_c), dtype=np.float32)
    for tr in range(n_r):
        for tc in range(n_c):
            tile = w[tr * TILE:(tr + 1) * TILE, tc * TILE:(tc + 1) * TILE]
            amax = max(float(np.abs(tile).max()), float(np.float32(1e-8)))
            multiplier = np.float32(128.0 / amax)
            product = (tile.astype(np.float64) * np.float64(multiplier)).astype(np.float32)
            q[tr * TILE:(tr + 1) * TILE, tc * TILE:(tc + 1) * TILE] = np.clip(np.rint(product), -128, 127)
            scale[tr, tc] = np.float32(np.float32(amax) / np.float32(128.0))
    return q, scale


def _divide_quantize(w: np.ndarray) -> np.ndarray:
    """The old rounding, x / (amax / 128): the rule the test must tell apart from upstream's."""
    rows, cols = w.shape
    q = np.empty((rows, cols), dtype=np.int64)
    for tr in range(-(-rows // TILE)):
        for tc in range(-(-cols // TILE)):
            tile = w[tr * TILE:(tr + 1) * TILE, tc * TILE:(tc + 1) * TILE]
            divisor = np.float32(np.float32(np.abs(tile).max()) / np.float32(128.0))
            quotient = (tile.astype(np.float64) / np.float64(divisor)).astype(np.float32)
            q[tr * TILE:(tr + 1) * TILE, tc * TILE:(tc + 1) * TILE] = np.clip(np.rint(quotient), -128, 127)
    return q


def _boundary_tile(amax: float, rng: np.random.Generator) -> np.ndarray:
    """A 128 x 128 float32 tile whose absmax is `amax` and whose other values sit within a few float32 steps of
    the points where x * (128 / amax) crosses a half-integer."""
    a = np.float32(amax)
    multiplier = np.float32(128.0 / float(a))
    halves = rng.integers(-128, 128, size=TILE * TILE) + 0.5
    centre = (halves / np.float64(multiplier)).astype(np.float32)
    offsets = rng.integers(-3, 4, size=TILE * TILE)
    values = centre.copy()
    for step in range(1, 4):  # nextafter, applied |offset| times, toward +/- infinity
        up, down = offsets >= step, offsets <= -step
        values[up] = np.nextafter(values[up], np.float32(np.inf))
        values[down] = np.nextafter(values[down], np.float32(-np.inf))
    values = np.clip(values, -a, a)
    values[0] = a
    return values.reshape(TILE, TILE)


def _boundary_matrix() -> np.ndarray:
    """3 x 2 tiles (the last row of tiles partial) with different absmax each, all values near ties."""
    rng = np.random.default_rng(17)
    amaxes = [1.7, 0.7853982, 3.3, 0.0191, 251.37, 1e-3]
    tiles = [_boundary_tile(a, rng) for a in amaxes]
    top = np.concatenate(tiles[0:2], axis=1)
    middle = np.concatenate(tiles[2:4], axis=1)
    bottom = np.concatenate(tiles[4:6], axis=1)[:60]
    return np.ascontiguousarray(np.concatenate([top, middle, bottom], axis=0))


def test_boundary_values_tell_the_two_roundings_apart() -> None:
    w = _boundary_matrix()
    q_upstream, _ = _upstream_quantize(w)
    differ = q_upstream.astype(np.int64) != _divide_quantize(w)
    # Random values disagree a few times per million; these disagree by the hundreds in every tile.
    assert differ.sum() > 1000
    for tr in range(3):
        for tc in range(2):
            assert differ[tr * TILE:(tr + 1) * TILE, tc * TILE:(tc + 1) * TILE].sum() > 50


def test_reference_quantizer_is_upstream_bit_for_bit() -> None:
    w = _boundary_matrix()
    q_expected, s_expected = _upstream_quantize(w)
    q, s = reference.quantize_int8_blockwise(torch.from_numpy(w))
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert np.array_equal(q.numpy(), q_expected), int((q.numpy() != q_expected).sum())
    assert np.array_equal(s.numpy(), s_expected)


def test_reference_quantizer_keeps_the_upstream_amax_floor() -> None:
    w = np.zeros((130, 128), dtype=np.float32)
    w[128:, :5] = np.float32([3e-9, -1e-9, 5e-10, 0.0, -3e-9])  # a tile below the 1e-8 floor
    q, s = reference.quantize_int8_blockwise(torch.from_numpy(w))
    q_expected, s_expected = _upstream_quantize(w)
    assert np.array_equal(q.numpy(), q_expected) and np.array_equal(s.numpy(), s_expected)
    assert (q[:128] == 0).all() and s[0, 0].item() == pytest.approx(1e-8 / 128)
    # quantized against 1e-8, not against its own absmax 3e-9 (which would give +-128/127)
    assert q[128, :5].tolist() == [38, -13, 6, 0, -38]


def test_triton_quantizer_is_upstream_bit_for_bit(interpreted_kernels) -> None:
    int8 = interpreted_kernels["int8_linear"]
    w = _boundary_matrix()
    q_expected, s_expected = _upstream_quantize(w)
    q, s = int8.quantize_int8_blockwise(torch.from_numpy(w))
    assert np.array_equal(q.numpy(), q_expected), int((q.numpy() != q_expected).sum())
    assert np.array_equal(s.numpy(), s_expected)


def test_triton_quantizer_on_bf16_and_strided_input(interpreted_kernels) -> None:
    int8 = interpreted_kernels["int8_linear"]
    w = torch.from_numpy(_boundary_matrix()).to(torch.bfloat16)
    view = w.t()  # strided: the kernel reads through strides
    q, s = int8.quantize_int8_blockwise(view)
    q_expected, s_expected = _upstream_quantize(view.float().contiguous().numpy())
    assert np.array_equal(q.numpy(), q_expected)
    assert np.array_equal(s.numpy(), s_expected)


def test_triton_rounding_edges(interpreted_kernels) -> None:
    int8 = interpreted_kernels["int8_linear"]
    below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))  # floor(y + 0.5) rounds this one up to 1
    below_1_5 = float(np.nextafter(np.float32(1.5), np.float32(0)))
    # absmax 128: the multiplier is exactly 1, so these values are the products the rounding sees
    row = [128.0, below_half, -below_half, 0.5, -0.5, 1.5, 2.5, -2.5, below_1_5, 126.5, -127.5, -128.0]
    w = torch.tensor([row], dtype=torch.float32)
    q, s = int8.quantize_int8_blockwise(w)
    assert q[0].tolist() == [127, 0, 0, 0, 0, 2, 2, -2, 1, 126, -128, -128]
    assert s.item() == 1.0
    assert torch.equal(q, reference.quantize_int8_blockwise(w)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_quantizers_are_upstream_bit_for_bit() -> None:
    from turbokernels import int8_linear

    w = _boundary_matrix()
    q_expected, s_expected = _upstream_quantize(w)
    on_gpu = torch.from_numpy(w).cuda()
    for quantize in (int8_linear.quantize_int8_blockwise, reference.quantize_int8_blockwise):
        q, s = quantize(on_gpu)
        assert np.array_equal(q.cpu().numpy(), q_expected), (quantize.__module__, int((q.cpu().numpy() != q_expected).sum()))
        assert np.array_equal(s.cpu().numpy(), s_expected)
