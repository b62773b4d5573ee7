"""rCM sampler: schedule numbers, expert switching, update math, seeding, cancellation."""

from __future__ import annotations

import math

import pytest
import torch

from inference.sampler import expert_plan, rcm_timesteps, sample
from inference.types import GenerationCanceled, InferenceInputError

SHAPE = (1, 16, 2, 3, 4)


class RecordingExpert:
    """Returns a fixed velocity field and records every (x, timestep) it was called with."""

    def __init__(self, velocity: float) -> None:
        self.velocity = velocity
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), timestep.clone()))
        return torch.full_like(x, self.velocity)


def _trig_to_rf(s: float) -> float:
    return math.sin(s) / (math.sin(s) + math.cos(s))


def test_four_step_schedule_matches_spec() -> None:
    assert rcm_timesteps(4, 200) == pytest.approx([0.99502, 0.93378, 0.85290, 0.60898, 0.0], abs=1e-5)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (1, [0.99502, 0.0]),
        (2, [0.99502, 0.93378, 0.0]),
        (3, [0.99502, 0.93378, 0.85290, 0.0]),
    ],
)
def test_shorter_schedules_are_prefixes_then_zero(steps: int, expected: list[float]) -> None:
    assert rcm_timesteps(steps, 200) == pytest.approx(expected, abs=1e-5)


def test_sigma_max_sets_first_time() -> None:
    assert rcm_timesteps(1, 80.0)[0] == pytest.approx(_trig_to_rf(math.atan(80.0)), abs=1e-12)
    assert rcm_timesteps(1, 80.0)[0] < rcm_timesteps(1, 200.0)[0]


@pytest.mark.parametrize("bad", [0, 5, -1, 2.0, True])
def test_bad_step_counts_raise(bad: object) -> None:
    with pytest.raises(InferenceInputError, match="num_steps"):
        rcm_timesteps(bad)  # type: ignore[arg-type]
    with pytest.raises(InferenceInputError, match=repr(bad)):
        sample(RecordingExpert(0.0), RecordingExpert(0.0), SHAPE, seed=0, num_steps=bad)  # type: ignore[arg-type]


def test_four_steps_use_two_high_then_two_low() -> None:
    high, low = RecordingExpert(0.1), RecordingExpert(0.2)
    sample(high, low, SHAPE, seed=1, num_steps=4, dtype=torch.float32)
    assert len(high.calls) == 2
    assert len(low.calls) == 2
    high_times = [call[1][0].item() for call in high.calls]
    low_times = [call[1][0].item() for call in low.calls]
    assert high_times == pytest.approx([995.02, 933.78], abs=0.01)
    assert low_times == pytest.approx([852.90, 608.98], abs=0.01)
    assert expert_plan(rcm_timesteps(4), 0.9) == ["high", "high", "low", "low"]


def test_one_step_uses_only_high_expert() -> None:
    high, low = RecordingExpert(0.0), RecordingExpert(0.0)
    sample(high, low, SHAPE, seed=1, num_steps=1, dtype=torch.float32)
    assert (len(high.calls), len(low.calls)) == (1, 0)


def test_network_sees_model_dtype_and_batch_timesteps() -> None:
    high, low = RecordingExpert(0.0), RecordingExpert(0.0)
    sample(high, low, (2, 16, 1, 2, 2), seed=3, num_steps=2, dtype=torch.bfloat16)
    x, timestep = high.calls[0]
    assert x.dtype == torch.bfloat16
    assert timestep.dtype == torch.bfloat16
    assert timestep.shape == (2,)
    # 995.02 in bf16 rounds to a multiple of 4 in [512, 1024).
    assert timestep[0].item() == torch.tensor(995.02, dtype=torch.bfloat16).item()


def test_ode_update_by_hand() -> None:
    seed, v1, v2 = 11, 0.3, -0.7
    high, low = RecordingExpert(v1), RecordingExpert(v2)
    t = rcm_timesteps(4)
    out = sample(high, low, SHAPE, seed=seed, num_steps=4, ode=True, dtype=torch.float32)

    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double()
    # Constant velocity: every ODE step moves by -(t - t_next) * v, so the sum telescopes per expert.
    expected = noise * t[0] - (t[0] - t[2]) * v1 - (t[2] - t[4]) * v2
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=1e-6)
    # The first network input is the scaled noise itself.
    torch.testing.assert_close(high.calls[0][0], (noise * t[0]).float())


def test_sde_update_by_hand() -> None:
    seed, v1, v2 = 5, 0.25, 0.5
    high, low = RecordingExpert(v1), RecordingExpert(v2)
    t = rcm_timesteps(3)
    out = sample(high, low, SHAPE, seed=seed, num_steps=3, ode=False, dtype=torch.float32)

    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=gen, dtype=torch.float32).double()
    eps = [torch.randn(SHAPE, generator=gen, dtype=torch.float32).double() for _ in range(3)]
    x1 = (1 - t[1]) * (noise * t[0] - t[0] * v1) + t[1] * eps[0]
    x2 = (1 - t[2]) * (x1 - t[1] * v1) + t[2] * eps[1]
    x3 = (1 - t[3]) * (x2 - t[2] * v2) + t[3] * eps[2]
    assert t[3] == 0.0
    torch.testing.assert_close(out, x3.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(low.calls[0][0], x2.float(), rtol=0, atol=1e-6)


def test_ode_and_sde_differ() -> None:
    ode = sample(RecordingExpert(0.1), RecordingExpert(0.1), SHAPE, seed=2, num_steps=4, ode=True)
    sde = sample(RecordingExpert(0.1), RecordingExpert(0.1), SHAPE, seed=2, num_steps=4, ode=False)
    assert not torch.allclose(ode, sde)


@pytest.mark.parametrize("ode", [True, False])
def test_same_seed_same_output_different_seed_different_output(ode: bool) -> None:
    def run(seed: int) -> torch.Tensor:
        return sample(RecordingExpert(0.2), RecordingExpert(-0.1), SHAPE, seed=seed, num_steps=4, ode=ode)

    a, b, c = run(42), run(42), run(43)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.dtype == torch.float32


def test_on_step_reports_every_step() -> None:
    seen: list[tuple[int, int]] = []
    sample(
        RecordingExpert(0.0), RecordingExpert(0.0), SHAPE, seed=0, num_steps=3, on_step=lambda s, n: seen.append((s, n))
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_cancellation_stops_after_hook_flips() -> None:
    high, low = RecordingExpert(0.0), RecordingExpert(0.0)
    asked = {"n": 0}

    def should_cancel() -> bool:
        asked["n"] += 1
        return asked["n"] > 2  # two steps run, the third is refused

    with pytest.raises(GenerationCanceled, match="step 3"):
        sample(high, low, SHAPE, seed=0, num_steps=4, should_cancel=should_cancel)
    assert len(high.calls) + len(low.calls) == 2


def test_wrong_velocity_shape_is_reported() -> None:
    def bad(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return x[:, :4]

    with pytest.raises(RuntimeError, match=r"\(1, 4, 2, 3, 4\)"):
        sample(bad, bad, SHAPE, seed=0, num_steps=1)
