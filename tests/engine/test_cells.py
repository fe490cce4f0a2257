"""coba_step against an independent scalar transcription of MODEL.md, and its physics."""

import math
import random

import torch

from engine.cells import CobaParams, coba_initial_state, coba_step

E_PARAMS = CobaParams(tau_m_ms=20.0, refractory_steps=20)


def scalar_trace(ampa, gaba, p: CobaParams):
    """MODEL.md's per-step rules for one cell, in plain Python floats."""
    v, ge, gi, held, spikes, volts = p.e_l_mv, 0.0, 0.0, 0, [], []
    for a, b in zip(ampa, gaba):
        ge = ge * math.exp(-p.dt_ms / p.tau_ampa_ms) + a
        gi = gi * math.exp(-p.dt_ms / p.tau_gaba_ms) + b
        if held > 0:
            v, s, held = p.v_reset_mv, 0, held - 1
        else:
            v = v + p.dt_ms / p.tau_m_ms * ((p.e_l_mv - v) + ge * (p.e_ampa_mv - v) + gi * (p.e_gaba_mv - v))
            s = 1 if v > p.v_th_mv else 0
            if s:
                v, held = p.v_reset_mv, p.refractory_steps
        spikes.append(s)
        volts.append(v)
    return spikes, volts


def run_cell(ampa, gaba, p: CobaParams):
    state = coba_initial_state((1,), p, torch.float64, "cpu")
    spikes, volts = [], []
    for a, b in zip(ampa, gaba):
        s, state = coba_step(state, torch.tensor([a], dtype=torch.float64),
                             torch.tensor([b], dtype=torch.float64), p)
        spikes.append(int(s.item()))
        volts.append(state.v.item())
    return spikes, volts


def test_golden_trace_matches_scalar_transcription():
    rng = random.Random(3)
    ampa = [rng.choice([0.0, 0.0, 0.0, 1.2]) for _ in range(3000)]
    gaba = [rng.choice([0.0] * 9 + [0.8]) for _ in range(3000)]
    want_spikes, want_v = scalar_trace(ampa, gaba, E_PARAMS)
    got_spikes, got_v = run_cell(ampa, gaba, E_PARAMS)
    assert sum(want_spikes) > 5  # the trace exercises spikes and refractory holds
    assert got_spikes == want_spikes
    assert max(abs(a - b) for a, b in zip(got_v, want_v)) < 1e-9


def test_first_steps_by_hand():
    # one AMPA jump of 1 at step 0: dv = dt/tau_m * g * (E_ampa - E_L) = 0.005 * 65
    _, volts = run_cell([1.0, 0.0], [0.0, 0.0], E_PARAMS)
    assert volts[0] == -65.0 + 0.005 * 65.0
    g = math.exp(-0.1 / 2.0)
    assert abs(volts[1] - (volts[0] + 0.005 * ((-65.0 - volts[0]) + g * (0.0 - volts[0])))) < 1e-12


def test_strong_drive_fires_once_per_refractory_period():
    # a held cell neither integrates nor spikes for R steps, then fires at once
    spikes, volts = run_cell([1000.0] * 200, [0.0] * 200, E_PARAMS)
    times = [t for t, s in enumerate(spikes) if s]
    assert times[0] == 0 and set(b - a for a, b in zip(times, times[1:])) == {21}
    assert all(v == -65.0 for t, v in enumerate(volts) if t % 21 != 0)


def test_inhibition_alone_never_fires_and_pulls_toward_e_gaba():
    spikes, volts = run_cell([0.0] * 2000, [0.5] * 2000, E_PARAMS)
    assert sum(spikes) == 0 and -80.0 < volts[-1] < -65.0


def test_surrogate_gradient_is_fast_sigmoid():
    from engine.cells import SpikeFunction

    x = torch.tensor([-2.0, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    s = SpikeFunction.apply(x, 2.0)
    s.sum().backward()
    assert s.tolist() == [0.0, 0.0, 1.0]  # strict threshold: x = 0 does not spike
    assert torch.allclose(x.grad, 1 / (1 + 2.0 * x.detach().abs()) ** 2)
