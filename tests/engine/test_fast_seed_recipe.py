"""The fast backend runs the seed recipe (MODEL.md, last section) like the reference:
its compiled CPU loop each option alone and all at once (`recipe="seed"`), PING and
COBA; its torch-op loop (the GPU's fallback, forced onto the CPU) the recipe and
groups of options. The Triton kernels do not run it: a GPU run takes the torch-op loop.

As tests/engine/test_fast_equivalence.py: float64, spikes bit-equal, voltages within
VOLTAGE_RTOL, gradients of all four weights within GRAD_RTOL. Exponential Euler calls
exp (torch's vectorised one in the reference, libm's in the compiled loop), whose
last bit may differ: voltages then differ by a few ULPs, within the same bound.

Small nets and short trials on random input (64 channels); the loop is strong enough
for I to fire. W_in is signed where Dale's constraint is off, so the GABA part of the
input and the clamp split are exercised too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import engine.fast.common
import engine.fast.network
from engine import Config, ConfigError, init_weights
from engine.fast import simulate_fast, simulate_fast_runs
from engine.reference import simulate_reference
from tests.engine.test_fast_equivalence import assert_gradients_close, assert_voltages_close

ALL_WEIGHTS = ("W_in", "W_ei", "W_ie", "W_out")
F64 = torch.float64
# canonical base: a strong E<->I loop, so that I fires within 30 ms
CANONICAL = dict(n_input=64, n_e=32, n_i=8, ei_strength=0.6, ie_strength=0.5, w_in_scale=3.0, t_ms=30.0,
                 dtype="float64", trainable=ALL_WEIGHTS)
SEED = dict(recipe="seed", n_input=64, n_e=40, n_i=12, t_ms=30.0, dtype="float64", trainable=ALL_WEIGHTS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_input(config: Config, batch: int = 3, seed: int = 0, p: float = 0.08) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(config.n_steps, batch, config.n_input, generator=gen) < p).to(F64)


def signed(weights, config: Config, seed: int = 5):
    """W_in with about 30 % of its entries negative (none under Dale, which clamps them)."""
    gen = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(weights["W_in"].shape, generator=gen) < 0.3, -1.0, 1.0).to(F64)
    return {**weights, "W_in": weights["W_in"] * sign}


def run(backend, config: Config, weights, x: torch.Tensor):
    """Output (voltages recorded) and the gradient of every weight."""
    w = {name: t.clone().requires_grad_(True) for name, t in weights.items()}
    out = backend(w, x, config, record_voltage=True)
    labels = torch.arange(x.shape[1]) % config.n_out
    loss = (F.cross_entropy(out["logits"], labels) + 0.01 * out["s_e"].sum(0).mean()
            + 0.01 * out["s_i"].sum(0).mean() + 0.003 * out["count_e"].pow(2).mean()
            + 0.002 * out["count_i"].mean())
    loss.backward()
    # a weight the loss does not reach has no gradient in the reference (None)
    return out, {name: w[name].grad if w[name].grad is not None else torch.zeros_like(w[name]) for name in w}


def assert_fast_matches_reference(config: Config, weights, x: torch.Tensor):
    ref, ref_grads = run(simulate_reference, config, weights, x)
    fast, fast_grads = run(simulate_fast, config, weights, x)
    assert ref["s_e"].sum() > 0 and ref["s_i"].sum() > 0, "both populations must fire"
    assert torch.equal(fast["s_e"], ref["s_e"]), "E spikes differ"
    assert torch.equal(fast["s_i"], ref["s_i"]), "I spikes differ"
    assert torch.equal(fast["count_e"], ref["count_e"]) and torch.equal(fast["count_i"], ref["count_i"])
    torch.testing.assert_close(fast["logits"], ref["logits"], rtol=1e-10, atol=1e-12)
    assert_voltages_close(fast, ref, "compiled")
    assert_gradients_close(fast_grads, ref_grads, config, "compiled")
    return ref


# --- each option alone, on the canonical model -------------------------------------

@pytest.mark.parametrize("changes", [
    {"integrator": "exponential_euler"},
    {"synapse_order": "add_then_decay"},
    {"input_arrival": "same_step"},
    {"input_arrival": "same_step", "synapse_order": "add_then_decay"},
    {"threshold_inclusive": True},
    {"refractory_mode": "countdown"},
    {"conductance_unit": "uS"},
    {"dale_weights": ("W_in", "W_out")},
    {"readout": "lif_mem_mean", "tau_out_ms": 2.0, "w_out_std": 1.0},
], ids=["exponential_euler", "add_then_decay", "same_step", "same_step_add_then_decay", "inclusive",
        "countdown", "uS", "dale", "lif_readout"])
def test_each_seed_option_alone_matches_the_reference(changes):
    config = Config(**CANONICAL, **changes)
    weights = signed(init_weights(config), config)
    assert_fast_matches_reference(config, weights, random_input(config, seed=1))


def test_voltage_floor_clamps_and_passes_no_gradient_where_it_clamped():
    """A floor just below V_reset with strong GABA input: cells are clamped to it
    (the tape's -inf marks them), and the next step's drive starts from the floor."""
    config = Config(**CANONICAL, v_floor_mv=-65.5)
    weights = signed(init_weights(config), config)
    weights["W_in"] = torch.where(weights["W_in"] < 0, 8.0 * weights["W_in"], weights["W_in"])
    ref = assert_fast_matches_reference(config, weights, random_input(config, seed=2))
    assert float(ref["v_e"].min()) == -65.5, "the floor must clamp some cell"


# --- the seed recipe, all options at once ---------------------------------------------

@pytest.mark.parametrize("arch", ["ping", "coba"])
def test_seed_recipe_matches_the_reference(arch):
    config = Config(**SEED, arch=arch)
    x = random_input(config, seed=3, p=0.2)
    if arch == "coba":  # I is silent without E->I: checked on E alone
        ref, ref_grads = run(simulate_reference, config, init_weights(config), x)
        fast, fast_grads = run(simulate_fast, config, init_weights(config), x)
        assert ref["s_e"].sum() > 0
        assert torch.equal(fast["s_e"], ref["s_e"]) and torch.equal(fast["s_i"], ref["s_i"])
        torch.testing.assert_close(fast["logits"], ref["logits"], rtol=1e-10, atol=1e-12)
        assert_voltages_close(fast, ref, "compiled")
        assert_gradients_close(fast_grads, ref_grads, config.replace(trainable=("W_in", "W_out")), "compiled")
        return
    assert_fast_matches_reference(config, init_weights(config), x)


def test_seed_recipe_resumes_countdowns_and_same_step_input_across_chunk_boundaries(monkeypatch):
    """With 7-step chunks every refractory countdown (29 steps E, 14 I) spans chunk
    starts, where the recomputation resumes each cell's state from a checkpoint."""
    monkeypatch.setattr(engine.fast.common, "_MAX_CHUNK_STEPS", 7)
    config = Config(**{**SEED, "t_ms": 20.0})
    assert_fast_matches_reference(config, init_weights(config), random_input(config, batch=2, seed=4, p=0.2))


def test_seed_recipe_split_over_threads_agrees():
    """Sample ranges on two threads (an uneven split of 3) give the one-thread result;
    the readout's W_out products run on the worker threads, where autograd is on."""
    config = Config(**SEED)
    x = random_input(config, seed=7, p=0.2)
    one, one_grads = run(simulate_fast, config, init_weights(config), x)
    torch.set_num_threads(2)
    try:
        two, two_grads = run(simulate_fast, config, init_weights(config), x)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one["s_e"], two["s_e"]) and torch.equal(one["s_i"], two["s_i"])
    for name in ALL_WEIGHTS:  # sums are associated per range: equal up to rounding
        rel = float((two_grads[name] - one_grads[name]).norm() / one_grads[name].norm())
        assert rel < 1e-12, f"{name}: {rel:.1e}"


def test_seed_recipe_float32_trains_through_the_fast_backend():
    """float32, what training runs: finite, nonzero gradients for the trainable
    weights, spike counts close to the reference's."""
    config = Config(recipe="seed", n_input=64, n_e=40, n_i=12, t_ms=30.0)
    x = random_input(config, batch=4, seed=6, p=0.2).float()
    weights = init_weights(config)
    w = {name: t.clone().requires_grad_(name in config.trainable) for name, t in weights.items()}
    out = simulate_fast(w, x, config, spike_trains=False)
    F.cross_entropy(out["logits"], torch.arange(4)).backward()
    for name in config.trainable:
        assert torch.isfinite(w[name].grad).all() and w[name].grad.norm() > 0, name
    with torch.no_grad():
        ref = simulate_reference(weights, x, config)
    assert abs(float(out["count_e"].detach().sum() - ref["count_e"].sum())) <= 0.02 * float(ref["count_e"].sum()) + 2


# --- the GPU path: the torch-op loop runs the recipe, the Triton kernels refuse it ------

def test_torch_op_loop_runs_the_seed_recipe(monkeypatch):
    """The GPU's fallback loop, forced onto the CPU: PING, all options, every weight."""
    monkeypatch.setattr(engine.fast.network, "loop_family", lambda device: "torch_ops")
    config = Config(**SEED)
    assert_fast_matches_reference(config, init_weights(config), random_input(config, seed=3, p=0.2))


@pytest.mark.parametrize("changes", [
    {"recipe": "seed", "arch": "coba"},
    {"v_floor_mv": -65.5, "conductance_unit": "uS", "integrator": "exponential_euler"},
    {"synapse_order": "add_then_decay", "refractory_mode": "countdown"},
], ids=["seed_coba", "floor_uS_exponential", "kick_first_countdown"])
def test_torch_op_loop_runs_seed_options(monkeypatch, changes):
    monkeypatch.setattr(engine.fast.network, "loop_family", lambda device: "torch_ops")
    base = SEED if changes.get("recipe") == "seed" else CANONICAL
    config = Config(**{**base, **changes})
    weights = init_weights(config)
    if changes.get("recipe") != "seed":
        weights = signed(weights, config)
        weights["W_in"] = torch.where(weights["W_in"] < 0, 8.0 * weights["W_in"], weights["W_in"])
    x = random_input(config, seed=8, p=0.2 if changes.get("recipe") else 0.08)
    ref, ref_grads = run(simulate_reference, config, weights, x)
    fast, fast_grads = run(simulate_fast, config, weights, x)
    assert ref["s_e"].sum() > 0
    assert torch.equal(fast["s_e"], ref["s_e"]) and torch.equal(fast["s_i"], ref["s_i"])
    assert_voltages_close(fast, ref, "torch_ops")
    trainable = ("W_in", "W_out") if config.arch == "coba" else ALL_WEIGHTS
    assert_gradients_close(fast_grads, ref_grads, config.replace(trainable=trainable), "torch_ops")


def test_a_gpu_run_of_the_seed_recipe_takes_the_torch_op_loop(monkeypatch):
    """loop_family says Triton (a GPU): the kernels lack the recipe, so the torch-op loop
    runs it, never the canonical model in its place."""
    monkeypatch.setattr(engine.fast.network, "loop_family", lambda device: "triton")
    config = Config(**{**SEED, "t_ms": 10.0})
    x = random_input(config, batch=2, seed=9, p=0.2)
    with torch.no_grad():
        fast, ref = simulate_fast(init_weights(config), x, config), simulate_reference(init_weights(config), x, config)
    assert torch.equal(fast["s_e"], ref["s_e"]) and torch.equal(fast["s_i"], ref["s_i"])


def test_packed_runs_refuse_what_the_triton_kernels_do_not_run():
    config = Config(**SEED)
    with pytest.raises(ConfigError) as err:
        simulate_fast_runs([init_weights(config)], [random_input(config, batch=1)], [config])
    assert err.value.field == "integrator" and "Triton" in err.value.message
