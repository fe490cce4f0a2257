"""The seed recipe (MODEL.md, last section): config, cells, readout, init, Dale, and a
fixture from the study's own code (pinglab) that the reference backend must reproduce."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cells import CobaParams, SpikeFunction, coba_initial_state, coba_step, membrane_update
from engine.config import FAST_TRITON_SUPPORTED, Config, ConfigError, fastest_backend
from engine.reference import network_params, readout_step, simulate_reference
from engine.simulate import simulate
from engine.train import project_dale
from engine.weights import init_weights

FIXTURE = Path(__file__).parent / "data" / "pinglab_nb024_ping.npz"
F64 = torch.float64


# --- config ----------------------------------------------------------------------

def test_seed_recipe_sets_every_row_of_the_table():
    c = Config(recipe="seed", backend="reference")
    assert (c.conductance_unit, c.c_m_e_nf, c.c_m_i_nf, c.tau_m_e_ms, c.tau_m_i_ms) == ("uS", 1.0, 0.5, 20.0, 5.0)
    assert (c.t_ref_e_ms, c.t_ref_i_ms, c.refractory_mode) == (3.0, 1.5, "countdown")
    assert (c.threshold_inclusive, c.v_floor_mv) == (True, -200.0)
    assert (c.integrator, c.synapse_order, c.input_arrival) == ("exponential_euler", "add_then_decay", "same_step")
    assert (c.n_e, c.n_i, c.max_rate_hz) == (1024, 256, 25.0)
    assert (c.init_scheme, c.w_in_scale, c.w_in_sparsity, c.init_std_frac) == ("seed", 1.2, 0.95, 0.1)
    assert (c.p_ei, c.p_ie, c.ei_strength, c.ie_strength) == (1.0, 1.0, 1.0, 2.0)
    assert (c.w_out_mean, c.w_out_std, c.w_out_scale) == (5.1, 3.8, 500.0)
    assert c.dale_weights == ("W_in", "W_out")
    assert (c.readout, c.tau_out_ms, c.readout_v_th, c.beta) == ("lif_mem_mean", 2.0, 1.0, 1.0)
    assert (c.v_grad_dampen, c.lr, c.batch_size, c.grad_clip, c.skip_nonfinite) == (1000.0, 4e-4, 256, 1.0, True)
    coba = Config(recipe="seed", backend="reference", arch="coba")
    assert (coba.w_in_scale, coba.ei_strength, coba.ie_strength, coba.w_out_scale, coba.v_grad_dampen) == (
        0.3, 0.0, 0.0, 100.0, 1000.0)


def test_canonical_recipe_is_unchanged_and_fields_override_the_recipe():
    c = Config()
    assert (c.recipe, c.n_e, c.n_i, c.tau_m_i_ms, c.t_ref_e_ms, c.max_rate_hz, c.lr, c.batch_size) == (
        "canonical", 800, 200, 10.0, 2.0, 100.0, 1e-3, 64)
    assert (c.integrator, c.synapse_order, c.input_arrival, c.threshold_inclusive, c.refractory_mode,
            c.v_floor_mv, c.conductance_unit, c.init_scheme, c.dale_weights, c.readout) == (
        "forward_euler", "decay_then_add", "next_step", False, "hold", None, "leak", "canonical", (), "leaky")
    assert Config(arch="coba").v_grad_dampen == 1.0 and Config(recipe="seed", backend="reference", arch="coba").v_grad_dampen == 1000.0
    mixed = Config(recipe="seed", backend="reference", integrator="forward_euler", n_e=64, dale_weights=[])
    assert (mixed.integrator, mixed.n_e, mixed.dale_weights, mixed.synapse_order) == (
        "forward_euler", 64, (), "add_then_decay")


def test_replace_with_another_recipe_or_arch_re_resolves_the_recipe_fields():
    seed = Config(n_e=64).replace(recipe="seed", backend="reference")
    assert (seed.integrator, seed.n_i, seed.lr, seed.n_e) == ("exponential_euler", 256, 4e-4, 64)  # n_e was set
    assert seed.replace(recipe="canonical") == Config(n_e=64, backend="reference")
    assert Config().replace(arch="coba") == Config(arch="coba")
    assert Config(recipe="seed", backend="reference").replace(arch="coba") == Config(recipe="seed", backend="reference", arch="coba")


def test_stored_config_is_explicit_and_round_trips():
    c = Config(recipe="seed", backend="reference", arch="coba")
    data = c.to_dict()
    # null only where null means "none": no voltage floor, no run to start from
    assert all(value is not None for key, value in data.items() if key not in ("v_floor_mv", "init_run"))
    assert Config.from_json(c.to_json()) == c
    # a stored canonical config reloads as the same model (v_floor_mv null = no floor)
    assert Config.from_dict(Config().to_dict()) == Config()


@pytest.mark.parametrize("fields, field", [
    ({"recipe": "pinglab"}, "recipe"), ({"integrator": "rk4"}, "integrator"),
    ({"threshold_inclusive": 1}, "threshold_inclusive"), ({"dale_weights": ["W_ei"]}, "dale_weights"),
    ({"v_floor_mv": -60.0}, "v_floor_mv"), ({"c_m_e_nf": 0.0}, "c_m_e_nf"),
])
def test_bad_variant_fields_are_named(fields, field):
    with pytest.raises(ConfigError) as err:
        Config(**fields)
    assert err.value.field == field


def test_fast_backend_takes_every_seed_option_on_every_device():
    """The compiled CPU loop and the torch-op loop run them all (the Triton kernels
    do not: a single GPU run then takes the torch-op loop, tests/engine/test_fast_seed_recipe.py)."""
    seed = Config(recipe="seed", backend="reference")
    for name in FAST_TRITON_SUPPORTED:
        for device in ("cpu", "cuda"):
            assert Config(backend="fast", device=device, **{name: getattr(seed, name)}).backend == "fast"
    assert fastest_backend({"recipe": "seed"}) == fastest_backend({"recipe": "seed", "device": "cuda"}) == "fast"


# --- cells: hand-computed golden values -------------------------------------------

def seed_cell(tau_m=20.0, c_m=1.0, refractory_steps=30, **changes) -> CobaParams:
    base = dict(tau_m_ms=tau_m, refractory_steps=refractory_steps, integrator="exponential_euler",
                synapse_order="add_then_decay", threshold_inclusive=True, refractory_mode="countdown",
                v_floor_mv=-200.0, c_m=c_m, g_l=1.0 if c_m is None else c_m / tau_m)
    return CobaParams(**{**base, **changes})


def step_cell(p: CobaParams, ampa_in=(), gaba_in=(), ampa_now=(), steps=None):
    steps = steps or max(len(ampa_in), len(gaba_in), len(ampa_now))
    state = coba_initial_state((1,), p, F64, "cpu")
    spikes, volts = [], []
    pad = lambda seq, t: torch.tensor([seq[t] if t < len(seq) else 0.0], dtype=F64)  # noqa: E731
    for t in range(steps):
        s, state = coba_step(state, pad(ampa_in, t), pad(gaba_in, t), p, ampa_now=pad(ampa_now, t))
        spikes.append(int(s.item()))
        volts.append(state.v.item())
    return spikes, volts


def test_exponential_euler_first_steps_by_hand():
    # E cell, 1 nF, tau_m 20 ms (g_L 0.05 µS); 0.05 µS of AMPA arrives at step 0 (same step)
    _, volts = step_cell(seed_cell(), ampa_now=[0.05, 0.0])
    # g_tot = 0.1 µS, V_inf = (0.05 * -65 + 0.05 * 0) / 0.1 = -32.5 mV, tau_eff = 1 nF / 0.1 µS = 10 ms
    assert volts[0] == pytest.approx(-65.0 + 32.5 * (1.0 - math.exp(-0.01)), abs=1e-12)
    # step 1: g = 0.05 exp(-0.1/2) (kick-then-decay of nothing new), g_tot = 0.05 + g
    g = 0.05 * math.exp(-0.05)
    v_inf = (0.05 * -65.0) / (0.05 + g)
    assert volts[1] == pytest.approx(v_inf + (volts[0] - v_inf) * math.exp(-0.1 * (0.05 + g) / 1.0), abs=1e-12)


def test_exponential_euler_is_exact_for_held_conductances():
    # with g constant the update is the exact solution: ten steps of dt equal one of 10 dt
    g_a, g_g = torch.tensor([0.3], dtype=F64), torch.tensor([0.7], dtype=F64)
    fine, coarse = seed_cell(dt_ms=0.1), seed_cell(dt_ms=1.0)
    v = torch.tensor([-65.0], dtype=F64)
    for _ in range(10):
        v = v + membrane_update(v, g_a, g_g, fine)
    v_once = -65.0 + membrane_update(torch.tensor([-65.0], dtype=F64), g_a, g_g, coarse)
    assert float(v) == pytest.approx(float(v_once), abs=1e-12)
    # forward Euler is not (the reason the seed switched)
    fe = seed_cell(dt_ms=1.0, integrator="forward_euler")
    assert abs(float(-65.0 + membrane_update(torch.tensor([-65.0], dtype=F64), g_a, g_g, fe)) - float(v)) > 0.1


def scalar_seed_trace(ampa, gaba, p: CobaParams):
    """The seed cell's rules in plain floats (models.py lif_step_expeuler, exp_synapse)."""
    v, ge, gi, ref, spikes, volts = p.e_l_mv, 0.0, 0.0, 0, [], []
    for a, b in zip(ampa, gaba):
        ge = (ge + a) * math.exp(-p.dt_ms / p.tau_ampa_ms)
        gi = (gi + b) * math.exp(-p.dt_ms / p.tau_gaba_ms)
        g_tot = p.g_l + ge + gi
        v_inf = (p.g_l * p.e_l_mv + ge * p.e_ampa_mv + gi * p.e_gaba_mv) / g_tot
        v = max(v + (v_inf - v) * (1.0 - math.exp(-p.dt_ms * g_tot / p.c_m)), p.v_floor_mv)
        ref = max(ref - 1, 0)
        s = 1 if (ref == 0 and v >= p.v_th_mv) else 0
        if s or ref > 0:
            v = p.v_reset_mv
        if s:
            ref = p.refractory_steps
        spikes.append(s)
        volts.append(v)
    return spikes, volts


def test_seed_cell_matches_scalar_transcription():
    rng = random.Random(5)
    p = seed_cell()
    ampa = [rng.choice([0.0, 0.0, 0.0, 0.12]) for _ in range(3000)]
    gaba = [rng.choice([0.0] * 9 + [0.05]) for _ in range(3000)]
    want_spikes, want_v = scalar_seed_trace(ampa, gaba, p)
    got_spikes, got_v = step_cell(p, ampa_in=ampa, gaba_in=gaba)
    assert sum(want_spikes) > 5
    assert got_spikes == want_spikes
    assert max(abs(a - b) for a, b in zip(got_v, want_v)) < 1e-9


def test_countdown_refractory_blocks_r_minus_one_steps_and_hold_r():
    drive = [5.0] * 400  # strong enough to fire on the first free step
    countdown, _ = step_cell(seed_cell(refractory_steps=30), ampa_in=drive)
    hold, _ = step_cell(seed_cell(refractory_steps=30, refractory_mode="hold"), ampa_in=drive)
    gaps = lambda s: set(np.diff(np.flatnonzero(s)).tolist())  # noqa: E731
    assert gaps(countdown) == {30} and gaps(hold) == {31}


def test_threshold_inclusivity_and_voltage_floor():
    at_threshold = torch.zeros(1, dtype=F64)
    assert SpikeFunction.apply(at_threshold, 1.0, True).item() == 1.0
    assert SpikeFunction.apply(at_threshold, 1.0, False).item() == 0.0
    # a forward-Euler step with a huge GABA kick overshoots far below E_gaba: the floor holds it
    p = seed_cell(integrator="forward_euler", c_m=None, synapse_order="decay_then_add")
    _, volts = step_cell(p, gaba_in=[5000.0])
    assert volts[0] == -200.0
    _, unfloored = step_cell(p._replace(v_floor_mv=None), gaba_in=[5000.0])
    assert unfloored[0] < -400.0


# --- readout -----------------------------------------------------------------------

def test_lif_readout_by_hand():
    p = network_params(Config(recipe="seed", backend="reference", dtype="float64"))
    beta = math.exp(-0.1 / 2.0)
    kick = (1.0 - beta) / 0.1  # per-spike jump per unit weight, about 0.4877
    w = torch.tensor([[3.0]], dtype=F64, requires_grad=True)
    u = torch.zeros(1, 1, dtype=F64)
    reads = []
    for s in (1.0, 0.0, 0.0):
        u, read = readout_step(u, torch.tensor([[s]], dtype=F64), w, p)
        reads.append(read)
    first = 3.0 * kick  # 1.463 >= 1: read, then 1 subtracted
    assert reads[0].item() == pytest.approx(first, abs=1e-12)
    assert reads[1].item() == pytest.approx(beta * (first - 1.0), abs=1e-12)  # 0.440: no spike
    assert reads[2].item() == pytest.approx(beta * beta * (first - 1.0), abs=1e-12)
    # the subtract reset stays in the graph: d read1 / dw = beta kick (1 - surrogate(read0 - 1))
    reads[1].sum().backward()
    surrogate = 1.0 / (1.0 + abs(first - 1.0)) ** 2
    assert w.grad.item() == pytest.approx(beta * kick * (1.0 - surrogate), abs=1e-12)


# --- init and Dale -----------------------------------------------------------------

def test_seed_init_fan_in_normalisation_and_sparsity_rescaling():
    c = Config(recipe="seed", backend="reference", n_e=256, n_i=64, dtype="float64")
    w = init_weights(c)
    w_in = w["W_in"]
    assert 0.04 < float((w_in > 0).double().mean()) < 0.06
    # the kept entries carry N(1.2, 0.12) / 0.05 / 784: the mean input per cell survives the zeros
    assert float(w_in[w_in > 0].mean()) == pytest.approx(1.2 / 0.05 / 784, rel=0.02)
    assert bool((w["W_ei"] > 0).all()) and bool((w["W_ie"] > 0).all())  # dense
    assert float(w["W_ei"].mean()) == pytest.approx(1.0 / 256, rel=0.02)
    assert float(w["W_ie"].mean()) == pytest.approx(2.0 / 64, rel=0.02)
    assert float(w["W_out"].mean()) == pytest.approx(500 * 5.2 / 256, rel=0.1)  # clamped N(5.1, 3.8)
    assert bool((w["W_out"] >= 0).all())


def test_dale_clamps_forward_and_projects_after_a_step():
    c = Config(recipe="seed", backend="reference", n_input=64, n_e=32, n_i=8, t_ms=20.0, dtype="float64")
    w = init_weights(c)
    x = (torch.rand(200, 2, 64, generator=torch.Generator().manual_seed(1), dtype=F64) < 0.05).to(F64)
    signed = {k: v.clone() for k, v in w.items()}
    signed["W_in"] = signed["W_in"] - 0.5 * (signed["W_in"] == 0).to(F64)  # negative where it was 0
    signed["W_out"] = signed["W_out"] - 10.0
    clamped = {**signed, "W_in": signed["W_in"].clamp(min=0), "W_out": signed["W_out"].clamp(min=0)}
    a, b = simulate_reference(signed, x, c), simulate_reference(clamped, x, c)
    assert torch.equal(a["s_e"], b["s_e"]) and torch.equal(a["logits"], b["logits"])
    assert not torch.equal(a["s_e"], simulate_reference(signed, x, c.replace(dale_weights=()))["s_e"])
    project_dale(signed, c)
    assert bool((signed["W_in"] >= 0).all()) and bool((signed["W_out"] >= 0).all())
    assert bool((signed["W_ei"] == w["W_ei"]).all())  # fixed weights are left alone


# --- the study's own code ------------------------------------------------------------

def fixture_case():
    f = np.load(FIXTURE)
    config = Config(recipe="seed", backend="reference", n_input=64, n_e=64, n_i=16, seed=7, t_ms=100.0, dtype="float64")
    x = torch.zeros(config.n_steps, 2, 64, dtype=F64)
    x[f["input_step"], f["input_sample"], f["input_channel"]] = 1.0
    return f, config, x


def test_seed_init_draws_pinglabs_weights_bit_for_bit():
    f, config, _ = fixture_case()
    ours = init_weights(config.replace(dtype="float32"))
    for name in ("W_in", "W_ei", "W_ie", "W_out"):
        assert np.array_equal(ours[name].numpy(), f[name]), name


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_backends_reproduce_pinglab_spike_for_spike(backend):
    """pinglab's COBANet (models.py @ 0b5617a, nb024's PING recipe: ei_strength 1, w_in 1.2,
    sparsity 0.95, w_out x 500, surrogate slope 1, dampening 1000, dt 0.1 ms), 64 -> 64 E /
    16 I, 2 samples x 1000 steps, float64: its spike trains, counts and logits are the data."""
    f, config, x = fixture_case()
    config = config.replace(backend=backend)
    weights = {name: torch.from_numpy(f[name]).to(F64) for name in ("W_in", "W_ei", "W_ie", "W_out")}
    out = simulate(weights, x, config)
    s_e = np.unpackbits(f["s_e_bits"], axis=-1)[..., :64]
    s_i = np.unpackbits(f["s_i_bits"], axis=-1)[..., :16]
    assert s_e.sum() > 300 and s_i.sum() > 300  # both populations and the loop are exercised
    assert np.array_equal(out["s_e"].numpy().astype(np.uint8), s_e)
    assert np.array_equal(out["s_i"].numpy().astype(np.uint8), s_i)
    assert np.array_equal(out["count_e"].numpy().astype(np.int32), f["count_e"])
    np.testing.assert_allclose(out["logits"].numpy(), f["logits"], rtol=0, atol=1e-9)


def test_seed_recipe_gradients_are_finite_and_reach_both_trainable_weights():
    c = Config(recipe="seed", backend="reference", n_input=64, n_e=40, n_i=10, t_ms=30.0)
    w = init_weights(c)
    for name in c.trainable:
        w[name].requires_grad_(True)
    x = (torch.rand(c.n_steps, 4, 64, generator=torch.Generator().manual_seed(2)) < 0.05).float()
    out = simulate_reference(w, x, c, spike_trains=False)
    torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3])).backward()
    for name in c.trainable:
        assert torch.isfinite(w[name].grad).all() and float(w[name].grad.abs().sum()) > 0, name
