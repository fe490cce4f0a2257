"""The decoder-transfer protocols (experiments.TRANSFER_PROTOCOLS) are built from the plain
test phase: the closed loop with separate feedback and readout decoders reduces to simulate.test
when both are one decoder, and a donor's state maps into a LIF receiver's synaptic filters."""

import pytest
import torch

from engine.force.config import ForceConfig
from engine.force.experiments import _closed_loop, _state_from, run_experiment
from engine.force import simulate
from engine.force.simulate import learn, make_setup

CONFIG = ForceConfig(n=40, p=0.4, encoder="centred", q=20.0, g=0.125, warmup_s=0.01, learn_s=0.03, test_s=0.01,
                     dtype="float64")


@pytest.fixture(scope="module")
def pair():
    setup = make_setup(CONFIG, [CONFIG.g] * 2, [CONFIG.q] * 2)
    return setup, {net: learn(net, setup, [5e-6, 5e-4]) for net in ("lif", "rate")}


@pytest.mark.parametrize("network", ["lif", "rate"])
def test_closed_loop_reads_out_what_test_feeds_back(pair, network):
    setup, trained = pair
    donor = trained["rate" if network == "lif" else "lif"].rls.phi
    start, stop = CONFIG.warmup_steps + CONFIG.learn_steps, CONFIG.n_steps
    own = trained[network].rls.phi
    # own decoders in the loop and the readout: the plain test phase
    z = _closed_loop(network, setup, trained[network].state, own, own, start, stop)
    assert torch.allclose(z, simulate.test(network, setup, trained[network]).outputs, rtol=0, atol=1e-12)
    # the donor's in both (the weights moved): the plain test with the donor's decoders
    z = _closed_loop(network, setup, trained[network].state, donor, donor, start, stop)
    assert torch.allclose(z, simulate.test(network, setup, trained[network], donor).outputs, rtol=0, atol=1e-12)
    # the donor's as a readout only: the receiver's own dynamics read with the donor's decoders
    z_own = _closed_loop(network, setup, trained[network].state, own, own + donor, start, stop)
    z_split = _closed_loop(network, setup, trained[network].state, own, donor, start, stop)
    assert torch.allclose(z_own - simulate.test(network, setup, trained[network]).outputs, z_split, rtol=0, atol=1e-9)
    assert not torch.allclose(z_split, simulate.test(network, setup, trained[network], donor).outputs, atol=1e-6)


def test_a_lif_receiver_gets_the_donors_filters_as_synaptic_current(pair):
    """In a LIF network the synaptic filters are G omega0 applied to the rate filters, so a LIF
    state mapped onto itself comes back unchanged (to rounding)."""
    setup, trained = pair
    state = trained["lif"].state
    mapped = _state_from("lif", state, state, setup)
    for name in state._fields:
        assert torch.allclose(getattr(mapped, name), getattr(state, name), rtol=1e-9, atol=1e-9), name
    rate = _state_from("rate", state, trained["rate"].state, setup)
    assert torch.equal(rate.r, state.r) and torch.equal(rate.hr, state.hr)


def test_experiment_scores_every_protocol_at_every_alpha(tmp_path):
    config = {"n": 30, "warmup_s": 0.02, "learn_s": 0.05, "test_s": 0.02}
    result = run_experiment("transfer_protocols", {"config": config, "run_in_s": 0.01}, tmp_path)
    cells = {(c["receiver"], c["protocol"], c["alpha"]) for c in result["cells"]}
    assert len(cells) == len(result["cells"]) == 2 * len(result["protocols"]) * len(result["alphas"])
    own = [c for c in result["cells"] if c["protocol"] == "own"]
    assert all(c["first"]["test_error"] > 0 and c["after_run_in"]["rmse"] >= 0 for c in own)
    assert len(result["decoder_fit"]) == len(result["alphas"])
    assert (tmp_path / "protocols_lif_to_rate.npz").exists() and (tmp_path / "protocols_rate_to_lif.npz").exists()
