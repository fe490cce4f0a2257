"""Every FORCE.md task gives a finite target (and input where it has one) for every step."""

import numpy as np
import pytest

from engine.force.config import TASKS, ForceConfig
from engine.force.measures import zero_crossing_frequency
from engine.force.supervisors import HDTS_BUMPS, make_supervisor


@pytest.mark.parametrize("task", TASKS)
def test_every_task_is_finite_and_bounded(task):
    config = ForceConfig(task=task, warmup_s=0.5, learn_s=1.5, test_s=1.0, n=10)
    sup = make_supervisor(config)
    assert sup.target.shape[0] == config.n_steps and np.isfinite(sup.target).all()
    assert 0.3 < np.abs(sup.target).max() <= 2.0  # sin(2 pi t) + sin(4 pi t) peaks at 1.76
    if sup.inputs is not None:
        assert sup.inputs.shape[0] == config.n_steps and np.isfinite(sup.inputs).all()


def test_shapes_of_the_multidimensional_tasks():
    short = dict(warmup_s=0.1, learn_s=0.1, test_s=0.1, n=10)
    assert make_supervisor(ForceConfig(task="lorenz", **short)).k == 3
    joy = make_supervisor(ForceConfig(task="ode_to_joy", **short))
    assert joy.k == 5 and joy.m == HDTS_BUMPS
    assert np.allclose((joy.inputs > 0).sum(axis=1), 1)  # one HDTS bump at a time


def test_sine_is_five_hertz_and_pitchfork_is_bistable():
    config = ForceConfig(warmup_s=0.0, learn_s=0.0, test_s=2.0)
    assert zero_crossing_frequency(make_supervisor(config).target[:, 0], config.dt_s) == pytest.approx(5.0, abs=1e-3)
    fork = make_supervisor(ForceConfig(task="pitchfork", warmup_s=0.0, learn_s=0.0, test_s=20.0))
    x = fork.target[:, 0]
    assert np.mean(np.abs(np.abs(x) - 1) < 0.1) > 0.9  # near +-1 nearly always
    assert (x > 0.9).any() and (x < -0.9).any()  # the pulses flip it


@pytest.mark.parametrize("task", ["vdp_harmonic", "vdp_relaxation"])
def test_van_der_pol_oscillates_at_freq_hz_at_any_mu(task):
    """freq_hz is the limit cycle's frequency: 2 pi freq t as model time would give
    1.08 Hz instead of 2 Hz at mu 5 (period 11.6, not 2 pi)."""
    config = ForceConfig(task=task, warmup_s=0.0, learn_s=0.0, test_s=4.0, freq_hz=2.0, n=10)
    x = make_supervisor(config).target[:, 0]
    assert zero_crossing_frequency(x, config.dt_s) == pytest.approx(2.0, rel=1e-3)
