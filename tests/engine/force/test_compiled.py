"""The compiled loop (engine/force/compiled.py) against the torch reference
(networks.py, rls.py, simulate.py): float64, a short run of warm-up, learning and
test for a batch of points; LIF spikes identical (the refractory counters and the
spike-driven filters), outputs, decoders and P to rounding."""

import numpy as np
import pytest
import torch

from engine.force import simulate
from engine.force.config import ForceConfig

SHORT = {"n": 80, "p": 0.3, "warmup_s": 0.01, "learn_s": 0.03, "test_s": 0.01, "dtype": "float64", "update_every": 7}
POINTS = [(12.0, 0.9, 1e-3), (4.0, 0.3, 5e-6), (25.0, 1.5, 5e-2)]  # (q, g, alpha)


def _run(backend: str, network: str, task: str = "sine", samples: bool = False):
    config = ForceConfig(**SHORT, backend=backend, task=task)
    setup = simulate.make_setup(config, [g for _, g, _ in POINTS], [q for q, _, _ in POINTS])
    trained = simulate.learn(network, setup, [a for _, _, a in POINTS], sample_rates=samples)
    tested = simulate.test(network, setup, trained)
    return trained, tested


@pytest.mark.parametrize("network", ["lif", "rate"])
def test_compiled_matches_the_reference(network):
    ref_trained, ref_tested = _run("reference", network)
    assert ref_tested.outputs.abs().max() > 0.01
    if network == "lif":
        assert (ref_trained.state.r > 0).float().mean() > 0.3  # most cells fired
    before = torch.get_num_threads()
    for threads in (1, 2):  # the batch's points split into this many ranges, one thread each
        torch.set_num_threads(threads)
        try:
            fast_trained, fast_tested = _run("compiled", network)
        finally:
            torch.set_num_threads(before)
        close = {"rtol": 1e-9, "atol": 1e-11}
        if network == "lif":
            assert torch.equal(fast_trained.state.ref, ref_trained.state.ref)  # who spiked in the last 2 ms
        for a, b in zip(fast_trained.state, ref_trained.state):
            torch.testing.assert_close(a, b, **close)
        torch.testing.assert_close(fast_trained.outputs, ref_trained.outputs, **close)
        torch.testing.assert_close(fast_tested.outputs, ref_tested.outputs, **close)
        assert fast_trained.rls.updates == ref_trained.rls.updates > 50
        torch.testing.assert_close(fast_trained.rls.phi, ref_trained.rls.phi, **close)
        assert torch.equal(fast_trained.rls.P, fast_trained.rls.P.transpose(1, 2))  # exactly symmetric
        torch.testing.assert_close(fast_trained.rls.P, ref_trained.rls.P, rtol=1e-9, atol=1e-15)


def test_compiled_inputs_and_rate_samples():
    """A task with an input (pitchfork) and the PCA's rate samples at each update."""
    ref_trained, ref_tested = _run("reference", "lif", task="pitchfork", samples=True)
    fast_trained, fast_tested = _run("compiled", "lif", task="pitchfork", samples=True)
    assert fast_trained.rate_samples.shape == ref_trained.rate_samples.shape
    torch.testing.assert_close(fast_trained.rate_samples, ref_trained.rate_samples, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(fast_tested.outputs, ref_tested.outputs, rtol=1e-9, atol=1e-11)


def test_compiled_does_not_modify_the_state_it_starts_from():
    config = ForceConfig(**SHORT, backend="compiled")
    setup = simulate.make_setup(config, [0.5], [10.0])
    trained = simulate.learn("lif", setup, [1e-3])
    kept = [x.clone() for x in trained.state]
    simulate.test("lif", setup, trained)
    assert all(torch.equal(a, b) for a, b in zip(kept, trained.state))
    assert np.isfinite(trained.outputs.numpy()).all()


def test_held_back_rank_one_terms_give_rls_py_updates():
    """The compiled RLS applies each update's P -= s s^T in the next update's pass (and the last
    one in _finish): three updates of one point equal rls.py's three, P exactly symmetric."""
    from engine.force import compiled
    from engine.force.rls import RLSState, rls_update

    n, rng = 60, np.random.default_rng(3)
    rates = rng.random((3, n)) * 30
    z, targets = rng.standard_normal((3, 1)), rng.standard_normal((3, 1))
    ref = RLSState(torch.eye(n, dtype=torch.float64)[None] * 1e-2, torch.zeros(1, n, 1, dtype=torch.float64), 0)
    P, phi, phi_fast = np.eye(n) * 1e-2, np.zeros((n, 1)), np.zeros((n, 1))
    held, k = np.zeros(n), np.empty(n)
    for r, zt, target in zip(rates, z, targets):
        ref = rls_update(ref, torch.from_numpy(r)[None], torch.from_numpy(zt - target)[None])
        compiled._rls_update(P, phi, phi_fast, r, zt, target, k, held)
    assert np.abs(held).max() > 0  # the third update's term is still held back here
    compiled._finish(P, held)
    np.testing.assert_allclose(P, ref.P[0].numpy(), rtol=1e-10, atol=1e-16)
    np.testing.assert_allclose(phi, ref.phi[0].numpy(), rtol=1e-10, atol=1e-14)
    assert np.array_equal(P, P.T)
