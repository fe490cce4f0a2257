"""A point's result depends on (seed, point) alone: the same (Q, G, alpha) run by
itself and at any position of a batch gives the same outputs (float64, to rounding:
a batch sums the spiking columns / rate products of all its rows in one product)."""

import pytest
import torch

from engine.force import simulate
from engine.force.config import ForceConfig

SHORT = {"n": 60, "p": 0.3, "warmup_s": 0.01, "learn_s": 0.03, "test_s": 0.01, "dtype": "float64", "backend": "reference"}
POINT = (12.0, 0.9, 1e-3)  # (q, g, alpha): strong enough that both twins are active and chaotic
OTHERS = [(4.0, 0.3, 5e-6), (25.0, 1.5, 5e-2)]


def _run(network: str, points: list[tuple[float, float, float]]):
    config = ForceConfig(**SHORT)
    setup = simulate.make_setup(config, [g for _, g, _ in points], [q for q, _, _ in points])
    trained = simulate.learn(network, setup, [a for _, _, a in points])
    tested = simulate.test(network, setup, trained)
    return torch.cat([trained.outputs, tested.outputs]), trained


@pytest.mark.parametrize("network", ["lif", "rate"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_point_alone_equals_the_point_in_a_batch(network, position):
    alone, alone_trained = _run(network, [POINT])
    batch = OTHERS[:position] + [POINT] + OTHERS[position:]
    batched, batched_trained = _run(network, batch)
    assert alone.abs().max() > 0.01  # learning moved the readout
    torch.testing.assert_close(batched[:, position], alone[:, 0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(batched_trained.rls.phi[position], alone_trained.rls.phi[0], rtol=1e-9, atol=1e-12)
    if network == "lif":  # same spikes: the same neurons were refractory at the end
        assert torch.equal(batched_trained.state.ref[position], alone_trained.state.ref[0])


def test_slow_and_fast_alpha_start_from_the_same_state():
    config = ForceConfig(**SHORT)
    setup = simulate.make_setup(config, [0.5, 0.5], [10.0, 10.0])
    for network in ("lif", "rate"):
        state = simulate.initial_state(network, setup)
        assert torch.equal(state.r[0], state.r[1]) and torch.equal(state[0][0], state[0][1])
