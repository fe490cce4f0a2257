"""Forward Euler's stable range (engine.stability): the step factor is the one the
reference's membrane update applies, and strong coupling is flagged."""

import pytest
import torch

from engine import Config, init_weights
from engine.analyses.coupling import scaled_weights
from engine.cells import CobaParams, membrane_update
from engine.inspect import test_subset as subset_of
from engine.stability import UNSTABLE_STEP_FACTOR, forward_euler_check, step_factor


@pytest.mark.parametrize("cell", [
    CobaParams(tau_m_ms=20.0, refractory_steps=20),  # leak units: C = tau_m, g_L = 1
    CobaParams(tau_m_ms=20.0, refractory_steps=20, c_m=0.2, g_l=0.01),  # nF and µS
])
def test_the_step_factor_is_what_one_forward_euler_step_multiplies_the_distance_by(cell):
    """V' - V_inf = (1 - h)(V - V_inf) for the reference's forward Euler step."""
    generator = torch.Generator().manual_seed(0)
    v = -90 + 60 * torch.rand(1000, dtype=torch.float64, generator=generator)
    g_ampa = 50 * cell.g_l * torch.rand(1000, dtype=torch.float64, generator=generator)
    g_gaba = 500 * cell.g_l * torch.rand(1000, dtype=torch.float64, generator=generator)
    g_tot = cell.g_l + g_ampa + g_gaba
    v_inf = (cell.g_l * cell.e_l_mv + g_ampa * cell.e_ampa_mv + g_gaba * cell.e_gaba_mv) / g_tot
    h = step_factor(g_ampa, g_gaba, cell)
    assert torch.allclose(membrane_update(v, g_ampa, g_gaba, cell), -h * (v - v_inf), rtol=1e-10, atol=1e-9)
    assert (h > UNSTABLE_STEP_FACTOR).any() and (h < 1).any()  # both sides of the range are exercised


@pytest.fixture(scope="module")
def small():
    config = Config(n_e=100, n_i=25, t_ms=100.0, ei_strength=0.2, tier="smoke")
    return config, init_weights(config), subset_of(config, 4)


def test_weak_coupling_is_stable_and_strong_coupling_is_flagged(small):
    config, weights, split = small
    weak = forward_euler_check(weights, split, config)
    assert weak.samples == 2 and not weak.unstable and weak.unstable_share == 0.0
    assert 0 < weak.step_factor_max < 1
    strong = forward_euler_check(scaled_weights(weights, 100.0, 100.0), split, config)
    assert strong.unstable and strong.step_factor_max > 10 and 0.1 < strong.unstable_share <= 1.0
    # W_ie at 0: no inhibition onto E, the largest conductance of the strong case
    open_loop = forward_euler_check(scaled_weights(weights, 100.0, 0.0), split, config, samples=1)
    assert open_loop.samples == 1 and open_loop.step_factor_max < strong.step_factor_max


def test_the_exponential_euler_needs_no_check(small):
    _, _, split = small
    seed = Config(n_e=100, n_i=25, t_ms=100.0, ei_strength=0.2, tier="smoke", recipe="seed")
    assert forward_euler_check(init_weights(seed), split, seed) is None
