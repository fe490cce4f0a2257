"""The LIF network and its rate twin: the f-I curve matches measured LIF rates,
the filters' identities hold, and both twins share weights and encoders."""

import math

import numpy as np
import pytest
import torch

from engine.force.config import ForceConfig
from engine.force.networks import f_i_rate, lif_step, make_weights, rate_step
from engine.force.simulate import initial_state, make_setup


def _constant_drive(setup, currents):
    """drive = I - ipsc, so with g = 0 every neuron sees the constant current I."""
    return torch.as_tensor(currents, dtype=setup.config.torch_dtype).reshape(1, -1)


def test_rate_twin_f_i_curve_matches_measured_lif_rates():
    currents = np.linspace(-45.0, 0.0, 24)  # from below threshold to ~146 Hz
    config = ForceConfig(n=len(currents), g=0.0, q=0.0, v_init_low_mv=-65.0, v_init_high_mv=-65.0)
    setup = make_setup(config, [0.0], [0.0])
    drive = _constant_drive(setup, currents)
    state = initial_state("lif", setup)
    first, last, count = {}, {}, np.zeros(len(currents))
    with torch.inference_mode():
        for i in range(int(1.0 / config.dt_s)):
            state, spikes = lif_step(state, drive, setup.weights, setup.params)
            for j in np.nonzero(spikes[0].numpy())[0]:
                first.setdefault(j, i)
                last[j] = i
                count[j] += 1
    measured = np.array([(count[j] - 1) / ((last[j] - first[j]) * config.dt_s) if count[j] > 1 else 0.0
                         for j in range(len(currents))])
    predicted = f_i_rate(drive, setup.params)[0].double().numpy()
    assert np.all(measured[currents <= config.v_peak_mv] == 0) and np.all(predicted[currents <= -40] == 0)
    firing = currents > -39.0
    # Euler at dt 0.05 ms puts each threshold crossing up to one step late: < 2 % here.
    assert measured[firing] == pytest.approx(predicted[firing], rel=0.02)
    assert predicted[-1] > 100  # the range covered reaches well above the study's rates


def test_lif_synaptic_current_is_omega_times_filtered_rates():
    """The current's filter is the rates' filter applied to omega s: ipsc = g omega0 r."""
    config = ForceConfig(n=120, g=0.5, q=0.0, p=0.3)
    setup = make_setup(config, [0.5, 1.0], [0.0, 0.0])
    state = initial_state("lif", setup)
    drive = torch.full((2, config.n), config.bias_mv + 5.0)
    with torch.inference_mode():
        for _ in range(400):
            state, _ = lif_step(state, drive, setup.weights, setup.params)
    expected = (state.r.double() @ setup.weights.omega0.double().T) * setup.params.g.double()[:, None]
    assert state.r.sum() > 0
    assert torch.allclose(state.ipsc.double(), expected, atol=1e-3 * expected.abs().max().item())


def test_rate_twin_filter_gain():
    """A constant rate R drives the filtered rate r to R (Hz) times the discrete
    filter's DC gain dt^2 / (tr td (1 - e^-dt/tr)(1 - e^-dt/td)) = 1 + O(dt / 2 tr),
    the gain a spike train of rate R sees too."""
    config = ForceConfig(n=3, g=0.0, q=0.0, rate_init_hz=0.0)
    setup = make_setup(config, [0.0], [0.0])
    drive = _constant_drive(setup, [-30.0, -20.0, -50.0])
    state = initial_state("rate", setup)
    with torch.inference_mode():
        for _ in range(int(0.3 / config.dt_s)):
            state, rate = rate_step(state, drive, setup.weights, setup.params)
    # the gain from the config alone, not from the params the network derived
    dt, tr, td = config.dt_s, config.tau_r_ms * 1e-3, config.tau_d_ms * 1e-3
    gain = dt ** 2 / (tr * td * (1 - math.exp(-dt / tr)) * (1 - math.exp(-dt / td)))
    assert torch.allclose(state.r, rate * gain, rtol=1e-4) and rate[0, 2] == 0
    assert (state.r[0, :2] > rate[0, :2]).all()  # the gain exceeds one: the filter reads high


def test_weights_follow_the_spec():
    config = ForceConfig(n=400, p=0.1, seed=3)
    w = make_weights(config, k=2, m=0)
    omega = w.omega0.double()
    nonzero = omega != 0
    assert nonzero.double().mean().item() == pytest.approx(0.1, abs=0.01)
    assert omega.sum(dim=1).abs().max().item() < 1e-4  # each row's non-zeros sum to 0
    # N(0,1) / (p sqrt N): the non-zeros' spread
    assert omega[nonzero].std().item() == pytest.approx(1 / (0.1 * 20), rel=0.05)
    assert w.eta0.shape == (400, 2) and w.eta0.min() >= -1 and w.eta0.max() <= 1 and w.eta0.min() < -0.9
    centred = make_weights(config.replace(encoder="centred"), k=1, m=0).eta0
    assert centred.abs().max() <= 0.5
    assert torch.equal(make_weights(config, 2, 0).omega0, w.omega0)  # the twins share them
