"""The canonical untrained network on MNIST input (MODEL.md "Populations and wiring")."""

import pytest
import torch

from engine import Config, init_weights, poisson_encode, simulate
from engine.analyses.spectrum import gamma_spectrum
from engine.data import load_tier

SAMPLES = 6


@pytest.fixture(scope="module")
def mnist_input():
    images = load_tier("smoke").test.images[::17][:SAMPLES]
    config = Config(t_ms=500.0)
    return poisson_encode(images, config, torch.Generator().manual_seed(5))


def run(arch: str, x: torch.Tensor):
    config = Config(arch=arch, t_ms=500.0)
    with torch.no_grad():
        out = simulate(init_weights(config), x, config)
    seconds = 0.5 * SAMPLES
    rate_e = out["s_e"].sum().item() / (config.n_e * seconds)
    rate_i = out["s_i"].sum().item() / (config.n_i * seconds)
    return rate_e, rate_i, gamma_spectrum(out["s_e"], config.dt_ms)


def test_ping_fires_sparsely_with_a_gamma_rhythm(mnist_input):
    rate_e, rate_i, spectrum = run("ping", mnist_input)
    print(f"PING: E {rate_e:.2f} Hz, I {rate_i:.2f} Hz, peak {spectrum.peak_hz:.1f} Hz "
          f"prominence {spectrum.prominence:.1f}")
    assert 5.0 <= rate_e <= 25.0
    assert rate_i > 0.0
    assert 30.0 <= spectrum.peak_hz <= 80.0 and spectrum.prominence >= 5.0


def test_coba_with_the_same_weights_fires_fast_without_rhythm(mnist_input):
    rate_e, rate_i, spectrum = run("coba", mnist_input)
    print(f"COBA: E {rate_e:.2f} Hz, I {rate_i:.2f} Hz, peak {spectrum.peak_hz:.1f} Hz "
          f"prominence {spectrum.prominence:.1f}")
    assert rate_e >= 60.0
    assert rate_i == 0.0
    assert spectrum.prominence < 5.0


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_input_events_and_dense_input_give_the_same_spikes(mnist_input, backend):
    """Each backend fed events and fed the dense tensor, against the reference fed
    the dense tensor: the event path of the backend under test is what is checked."""
    from engine import InputEvents

    config = Config(n_e=100, n_i=25, t_ms=50.0, dtype="float64", ei_strength=0.2)
    x = mnist_input[:500]
    weights = init_weights(config)
    expected = simulate(weights, x, config.replace(backend="reference"))
    assert expected["s_e"].any() and expected["s_i"].any()
    under_test = config.replace(backend=backend)
    for given in (x, InputEvents.from_dense(x)):
        out = simulate(weights, given, under_test)
        assert torch.equal(out["s_e"], expected["s_e"]) and torch.equal(out["s_i"], expected["s_i"])


def test_input_of_the_wrong_shape_is_a_clear_error():
    config = Config(n_e=10, n_i=5)
    with pytest.raises(ValueError, match=r"input_spikes must be \[T, B, 784\]"):
        simulate(init_weights(config), torch.zeros(10, 2, 100), config)
