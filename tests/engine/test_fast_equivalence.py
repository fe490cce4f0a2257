"""The fast backend against the reference: identical float64 spikes, voltages to
VOLTAGE_RTOL, gradients to GRAD_RTOL.

Spikes must be bit-equal on every CPU. Voltages and gradients are compared within a
bound, not bit for bit: torch's CPU kernels pick a vector code path per CPU (AVX2,
AVX-512), so their last bits differ from one machine to the next (up to 7e-15 mV
seen on an AVX-512 Xeon, i.e. about one ULP of a -65 mV voltage).

Both of the fast backend's time loops are checked: the compiled loops it runs on
CPU (engine.fast.cpu) and the torch-op loop it runs on CUDA (engine.fast.torch_ops),
the latter forced onto the CPU here. Canonical network (800 E / 200 I), 2 MNIST
samples of the smoke tier as Poisson input, 2000 steps for PING and COBA; shorter
trials for the flag variants. The loss
is cross-entropy plus a rate term on s_e and s_i, so the spike outputs' own
gradients are checked as well as the readout's.

The module pins one intra-op thread: the reference's thousands of small matmuls
run several times slower when OpenMP threads compete with other processes.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import engine.fast.common
import engine.fast.network
from engine import Config, ConfigError, init_weights, poisson_encode, poisson_events, simulate
from engine.data import load_tier
from engine.fast import cpu_kernels as kernels
from engine.fast import simulate_fast
from engine.fast.cpu import PresynapticProduct, presynaptic_operand, product_operand
from engine.reference import simulate_reference

ALL_WEIGHTS = ("W_in", "W_ei", "W_ie", "W_out")
GRAD_RTOL = 1e-6
# Voltages: 1e-12 relative to the trial's voltage scale (~70 mV) is 7e-11 mV, about
# 5,000 float64 ULPs, far above per-CPU rounding and far below anything that could
# move a threshold crossing without the spike check noticing.
VOLTAGE_RTOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def smoke():
    return load_tier("smoke")


def poisson_input(smoke, config: Config, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return poisson_encode(smoke.train.images[:batch], config, torch.Generator().manual_seed(seed))


@contextmanager
def time_loop(kind: str):
    """Run the fast backend with its compiled CPU loops or with the torch-op loop."""
    if kind != "torch_ops":
        yield
        return
    original = engine.fast.network.loop_family
    engine.fast.network.loop_family = lambda device: "torch_ops"
    try:
        yield
    finally:
        engine.fast.network.loop_family = original


LOOPS = ("compiled", "torch_ops")


def run(backend, config: Config, x: torch.Tensor, labels: torch.Tensor, record_voltage=False):
    """Output and the gradient of every trainable weight for one backend."""
    weights = init_weights(config)
    for name in config.trainable:
        weights[name].requires_grad_(True)
    out = backend(weights, x, config, record_voltage=record_voltage)
    loss = (F.cross_entropy(out["logits"], labels) + 0.01 * out["s_e"].sum(0).mean()
            + 0.01 * out["s_i"].sum(0).mean() + 0.003 * out["count_e"].pow(2).mean()
            + 0.002 * out["count_i"].mean())
    loss.backward()
    return out, {name: weights[name].grad for name in config.trainable}


def assert_equivalent(config: Config, x: torch.Tensor, labels: torch.Tensor, record_voltage=False):
    """Both fast loops against one reference run."""
    ref, ref_grads = run(simulate_reference, config, x, labels, record_voltage)
    assert ref["s_e"].sum() > 0
    for loop in LOOPS:
        with time_loop(loop):
            fast, fast_grads = run(simulate_fast, config, x, labels, record_voltage)
        assert torch.equal(fast["s_e"], ref["s_e"]), f"{loop}: E spikes differ"
        assert torch.equal(fast["s_i"], ref["s_i"]), f"{loop}: I spikes differ"
        assert torch.equal(fast["count_e"], ref["count_e"]) and torch.equal(fast["count_i"], ref["count_i"])
        torch.testing.assert_close(fast["logits"], ref["logits"], rtol=1e-10, atol=1e-12)
        if record_voltage:
            assert_voltages_close(fast, ref, loop)
        assert_gradients_close(fast_grads, ref_grads, config, loop)
    return ref


def assert_voltages_close(out, ref, label: str):
    """Voltages equal up to VOLTAGE_RTOL of the trial's largest |v| (see the module doc)."""
    for name in ("v_e", "v_i"):
        scale = float(ref[name].abs().max())
        err = float((out[name] - ref[name]).abs().max())
        assert err <= VOLTAGE_RTOL * scale, f"{label}: {name} differs by {err:.2e} mV (scale {scale:.1f} mV)"


def test_voltage_bound_accepts_per_cpu_rounding_and_rejects_real_differences():
    """Another CPU's last-bit rounding (7e-15 mV) passes; a 1e-9 mV difference fails."""
    v = -65.0 + torch.rand(30, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = {"v_e": v, "v_i": v.clone()}
    assert_voltages_close({"v_e": v + 7e-15, "v_i": torch.nextafter(v, torch.zeros_like(v))}, ref, "rounding")
    with pytest.raises(AssertionError, match="v_e differs"):
        assert_voltages_close({"v_e": v + 1e-9, "v_i": v}, ref, "real")


def assert_gradients_close(grads, ref_grads, config: Config, label: str):
    for name in config.trainable:
        reference = ref_grads[name]
        assert torch.isfinite(grads[name]).all(), f"{label}: {name}"
        if reference.norm() == 0:
            assert grads[name].norm() == 0, f"{label}: {name}"
            continue
        rel = float((grads[name] - reference).norm() / reference.norm())
        assert rel < GRAD_RTOL, f"{label}: {name}: relative gradient error {rel:.2e}"


# --- canonical network, full trial -------------------------------------------------

def test_ping_canonical_2000_steps_all_weights_trainable(smoke):
    config = Config(arch="ping", dtype="float64", trainable=ALL_WEIGHTS)
    x = poisson_input(smoke, config)
    ref = assert_equivalent(config, x, smoke.train.labels[:2])
    assert ref["s_i"].sum() > 0, "the PING loop must be engaged"


def test_coba_canonical_2000_steps(smoke):
    config = Config(arch="coba", dtype="float64", trainable=ALL_WEIGHTS)
    x = poisson_input(smoke, config, seed=1)
    assert_equivalent(config, x, smoke.train.labels[:2])


# --- flags, canonical network, shorter trials --------------------------------------

@pytest.mark.parametrize("changes", [
    {"detach_recurrent": True},
    {"v_grad_dampen": 1.0},
], ids=["detach_recurrent", "v_grad_dampen_1"])
def test_ping_flags(smoke, changes):
    config = Config(arch="ping", dtype="float64", t_ms=50.0, trainable=ALL_WEIGHTS, **changes)
    x = poisson_input(smoke, config, seed=2)
    assert_equivalent(config, x, smoke.train.labels[:2])


def test_short_trial_all_weights_with_voltages(smoke):
    config = Config(arch="ping", dtype="float64", t_ms=30.0, beta=3.0, trainable=ALL_WEIGHTS)
    x = poisson_input(smoke, config, batch=3, seed=3)
    assert_equivalent(config, x, smoke.train.labels[:3], record_voltage=True)


# --- small network with a strong loop: every flag, signed W_in ----------------------

SMALL = dict(n_e=30, n_i=8, ei_strength=0.6, ie_strength=0.5, t_ms=30.0, dtype="float64",
             trainable=ALL_WEIGHTS)


@pytest.mark.parametrize("changes", [
    {},
    {"detach_reset": False},
    {"detach_recurrent": True, "detach_reset": False},
    {"v_grad_dampen": 1.0, "beta": 5.0},
    {"arch": "coba", "ei_strength": 0.0},
    {"p_ei": 1.0, "p_ie": 1.0, "ei_strength": 0.15, "ie_strength": 0.12},
    {"p_ei": 1.0, "ei_strength": 0.15},
], ids=["default", "keep_reset", "detach_both", "undamped", "coba", "dense_recurrent", "dense_ei_sparse_ie"])
def test_small_network_flags(smoke, changes):
    config = Config(**{**SMALL, **changes})
    weights = init_weights(config)
    # signed W_in: some entries negative (GABA input), some exactly zero
    sign = torch.where(torch.rand(weights["W_in"].shape, generator=torch.Generator().manual_seed(5)) < 0.3, -1.0, 1.0)
    x = poisson_input(smoke, config, batch=2, seed=4)
    labels = smoke.train.labels[:2]
    grads, outs = [], []
    for backend, loop in ((simulate_reference, None), (simulate_fast, "compiled"), (simulate_fast, "torch_ops")):
        w = {name: t.clone() for name, t in init_weights(config).items()}
        w["W_in"] = 3.0 * w["W_in"] * sign.to(w["W_in"].dtype)
        for name in config.trainable:
            w[name].requires_grad_(True)
        with time_loop(loop):
            out = backend(w, x, config)
            (F.cross_entropy(out["logits"], labels) + 0.01 * out["s_e"].sum(0).mean()).backward()
        outs.append(out)
        # a weight the loss does not reach has no gradient in the reference (None)
        grads.append({name: w[name].grad if w[name].grad is not None else torch.zeros_like(w[name])
                      for name in config.trainable})
    for out, grad, loop in zip(outs[1:], grads[1:], LOOPS):
        assert torch.equal(outs[0]["s_e"], out["s_e"]) and torch.equal(outs[0]["s_i"], out["s_i"]), loop
        for name in config.trainable:
            ref = grads[0][name]
            err = (grad[name] - ref).norm()
            assert err <= GRAD_RTOL * ref.norm() + 1e-300, f"{loop}: {name}: {float(err / ref.norm()):.2e}"


def test_refractory_holds_resume_across_chunk_boundaries(smoke, monkeypatch):
    """With 7-step chunks every hold (20 steps for E, 10 for I) spans chunk starts,
    where the recomputation resumes each cell's refractory state from a checkpoint."""
    monkeypatch.setattr(engine.fast.common, "_MAX_CHUNK_STEPS", 7)
    config = Config(**{**SMALL, "t_ms": 20.0})
    ref = assert_equivalent(config, poisson_input(smoke, config, seed=9), smoke.train.labels[:2],
                            record_voltage=True)
    assert ref["s_i"].sum() > 0
    assert config.t_ref_e_ms / config.dt_ms > 7 and config.t_ref_i_ms / config.dt_ms > 7


def test_recurrent_adjoint_product_is_sparse_for_masked_weights_and_dense_otherwise():
    masked = init_weights(Config(**SMALL))  # Bernoulli(0.2) masks: the sparse product
    full = init_weights(Config(**{**SMALL, "p_ei": 1.0, "p_ie": 1.0}))
    assert presynaptic_operand(masked["W_ei"]).layout == torch.sparse_csr
    assert presynaptic_operand(masked["W_ie"]).layout == torch.sparse_csr
    assert presynaptic_operand(full["W_ei"]).layout == torch.strided
    assert presynaptic_operand(full["W_ie"]).layout == torch.strided


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [3, 32, 45])
def test_sparse_presynaptic_product_matches_the_dense_one(batch, dtype):
    """The compiled CSR product on a column slice of an adjoint (as the backward
    passes it), for batches of one partial block, one whole block and more, and
    targets in two whole tiles and a partial one."""
    gen = torch.Generator().manual_seed(10)
    targets = 2 * kernels.TILE + 50
    w = (torch.rand(80, targets, generator=gen) < 0.2).to(dtype) * torch.rand(80, targets, generator=gen, dtype=dtype)
    lam = torch.randn(batch, targets + 40, generator=gen, dtype=dtype)[:, 20:20 + targets]
    product = PresynapticProduct.of(product_operand(w), batch, dtype)
    assert product.dense is None
    kernels.presynaptic_product(*product.compiled, lam.numpy(), product.out.numpy())
    torch.testing.assert_close(product.out, lam @ w.t())


@pytest.mark.parametrize("loop", LOOPS)
def test_input_events_and_their_dense_tensor_give_identical_results(smoke, loop):
    """Training passes poisson_events straight to the fast backend, which skips nonzero()."""
    config = Config(arch="ping", dtype="float64", t_ms=40.0, trainable=ALL_WEIGHTS)
    events = poisson_events(smoke.train.images[:2], config, torch.Generator().manual_seed(8))
    labels = smoke.train.labels[:2]
    with time_loop(loop):
        dense, dense_grads = run(simulate_fast, config, events.to_dense(), labels)
        direct, direct_grads = run(simulate_fast, config, events, labels)
    assert dense["s_e"].sum() > 0
    assert torch.equal(direct["s_e"], dense["s_e"]) and torch.equal(direct["s_i"], dense["s_i"])
    for name in ALL_WEIGHTS:
        assert torch.equal(direct_grads[name], dense_grads[name]), name


def test_compiled_loops_split_over_threads_agree(smoke):
    """Sample ranges on two threads (an uneven split of 3) give the one-thread result."""
    config = Config(arch="ping", dtype="float64", t_ms=40.0, trainable=ALL_WEIGHTS)
    x = poisson_input(smoke, config, batch=3, seed=6)
    one, one_grads = run(simulate_fast, config, x, smoke.train.labels[:3])
    torch.set_num_threads(2)
    try:
        two, two_grads = run(simulate_fast, config, x, smoke.train.labels[:3])
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one["s_e"], two["s_e"]) and torch.equal(one["s_i"], two["s_i"])
    for name in ALL_WEIGHTS:  # sums are associated per range: equal up to rounding
        rel = float((two_grads[name] - one_grads[name]).norm() / one_grads[name].norm())
        assert rel < 1e-12, f"{name}: {rel:.1e}"


@pytest.mark.parametrize("loop", LOOPS)
def test_without_spike_trains_counts_logits_and_gradients_are_unchanged(smoke, loop):
    """spike_trains=False (what training uses) leaves out s_e / s_i and nothing else."""
    config = Config(arch="ping", dtype="float64", t_ms=40.0, trainable=ALL_WEIGHTS)
    x = poisson_input(smoke, config, batch=2, seed=7)
    labels = smoke.train.labels[:2]
    results = []
    for trains in (True, False):
        weights = init_weights(config)
        for name in config.trainable:
            weights[name].requires_grad_(True)
        with time_loop(loop):
            out = simulate_fast(weights, x, config, spike_trains=trains)
            (F.cross_entropy(out["logits"], labels) + 0.01 * out["count_e"].mean()).backward()
        results.append((out, {name: weights[name].grad for name in config.trainable}))
    (full, full_grads), (bare, bare_grads) = results
    assert "s_e" not in bare and "s_i" not in bare and full["s_e"].shape[0] == config.n_steps
    assert torch.equal(bare["count_e"], full["s_e"].sum(0)) and torch.equal(bare["count_i"], full["s_i"].sum(0))
    assert torch.equal(bare["logits"], full["logits"])
    for name in config.trainable:
        torch.testing.assert_close(bare_grads[name], full_grads[name], rtol=1e-12, atol=0)


# --- dispatch, inference, dtype and unsupported combinations ------------------------

def test_simulate_dispatches_to_fast_and_runs_without_grad(smoke):
    config = Config(arch="ping", t_ms=20.0, backend="fast")
    x = poisson_input(smoke, config, batch=4)
    with torch.no_grad():
        out = simulate(init_weights(config), x, config, record_voltage=True)
        ref = simulate_reference(init_weights(config), x, config, record_voltage=True)
    assert out["s_e"].dtype == torch.float32 and out["logits"].shape == (4, 10)
    assert out["v_e"].shape == ref["v_e"].shape and out["v_i"].shape == ref["v_i"].shape
    # float32 may round differently from the reference; spike counts stay close
    assert abs(float(out["s_e"].sum() - ref["s_e"].sum())) <= 0.02 * float(ref["s_e"].sum()) + 2


def test_float32_gradients_finite(smoke):
    config = Config(arch="ping", t_ms=50.0, backend="fast", trainable=ALL_WEIGHTS)
    x = poisson_input(smoke, config, batch=2)
    _, grads = run(simulate_fast, config, x, smoke.train.labels[:2])
    assert all(torch.isfinite(g).all() and g.norm() > 0 for g in grads.values())


def test_membrane_penalty_is_refused():
    config = Config(backend="fast", mem_reg_weight=0.1, t_ms=1.0)
    x = torch.zeros(10, 1, config.n_input, dtype=torch.bool)
    with pytest.raises(ConfigError) as info:
        simulate(init_weights(config), x, config)
    assert info.value.field == "backend"
