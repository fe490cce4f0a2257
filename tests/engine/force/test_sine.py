"""Nicola & Clopath's sine (Q 10, G 0.04, alpha 0.1 dt, 5 s of RLS): both twins
learn a 5 Hz oscillation of amplitude near 1 and keep it with learning off."""

import pytest

from engine.force import simulate
from engine.force.config import ForceConfig
from engine.force.measures import zero_crossing_frequency

pytestmark = pytest.mark.slow  # one to two minutes per twin on one core (N 1000, 7.5 s simulated)


@pytest.mark.parametrize("network", ["lif", "rate"])
def test_sine_is_learned_at_five_hertz(network):
    config = ForceConfig(n=1000, q=10.0, g=0.04, alpha=0.1 * 5e-5, warmup_s=0.5, learn_s=5.0, test_s=2.0)
    setup = simulate.make_setup(config, [config.g], [config.q])
    trained = simulate.learn(network, setup, [config.alpha])
    z = simulate.test(network, setup, trained).outputs[:, 0, 0].double().numpy()
    frequency = zero_crossing_frequency(z, config.dt_s)
    amplitude = (z.max() - z.min()) / 2
    # Free-running after learning, the oscillation keeps the target's frequency to
    # within 1 % at N 1000 (measured 4.99 Hz LIF, 4.97 Hz rate; 5.06 / 5.09 Hz at N 200).
    assert frequency == pytest.approx(5.0, abs=0.05), frequency
    assert amplitude == pytest.approx(1.0, abs=0.1), amplitude
