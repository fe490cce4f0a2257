"""engine.whatif: the compiled loop's summary mode and the threads that split a what-if
change nothing it answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import Config, ConfigError
from engine.data import load_tier
from engine.encoding import poisson_events
from engine.seeding import batch_generator
from engine.simulate import simulate
from engine.weights import init_weights
from engine.whatif import (
    Knobs,
    _merged,
    _reduced,
    _summary_on_cpu,
    simulation_config,
    what_if,
)
from tests.conftest import small_config


def test_threads_split_the_images_without_changing_a_spike():
    config = Config.from_dict(small_config(t_ms=100.0, ei_strength=0.2, ie_strength=4.0))
    weights, test = init_weights(config), load_tier(config.tier).test
    knobs = Knobs(w_ie_scale=0.5, sample=3, n_images=7)
    one, three = what_if(weights, config, test, knobs, threads=1), what_if(weights, config, test, knobs, threads=3)
    assert one.raster_e.step.size > 0 and one.raster_i.step.size > 0  # not a silent network
    for name in ("raster_e", "raster_i"):
        for part in ("step", "cell"):
            np.testing.assert_array_equal(getattr(getattr(three, name), part), getattr(getattr(one, name), part))
    for name in ("cell_rates_e_hz", "cell_rates_i_hz", "population_rate_e_hz", "population_rate_i_hz"):
        np.testing.assert_array_equal(getattr(three, name), getattr(one, name), err_msg=name)
    assert (three.predicted, three.accuracy_pct, three.gamma_peak_hz) == (one.predicted, one.accuracy_pct,
                                                                         one.gamma_peak_hz)
    assert one.spectrum is not None
    np.testing.assert_array_equal(three.spectrum.power, one.spectrum.power)


def test_the_callers_torch_threads_are_left_as_they_were():
    config = Config.from_dict(small_config(t_ms=40.0))
    torch.set_num_threads(2)
    what_if(init_weights(config), config, load_tier(config.tier).test, Knobs(n_images=2), threads=2)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("recipe", [{"ei_strength": 0.2, "ie_strength": 4.0},
                                    {"recipe": "seed", "n_e": 40, "n_i": 12, "dtype": "float64", "max_rate_hz": 100.0}],
                         ids=["canonical", "seed-recipe"])
def test_summary_mode_answers_what_the_full_trains_give(recipe):
    """The compiled loop's per-step population counts and sample 0's trains
    (engine.fast.cpu.run_summary) against the same loop's full trains reduced
    afterwards: spikes, counts and logits equal, on one thread and on three."""
    config = Config.from_dict(small_config(t_ms=60.0, **recipe))
    cfg = simulation_config(config, Knobs())
    weights, test = init_weights(config), load_tier(config.tier).test
    w = {name: t.to(dtype=cfg.torch_dtype) for name, t in weights.items()}
    events = _merged(*(poisson_events(test.images[lo:hi], cfg, batch_generator(cfg.seed, "t", lo, 0))
                       for lo, hi in ((4, 5), (0, 7))))
    full = _reduced(simulate(w, events, cfg, spike_trains=True))
    assert full["picked"]["raster_e"].step.size > 0 and full["picked"]["raster_i"].step.size > 0
    assert full["active_e"][:, 1:].sum() > 0  # the other samples spike too
    for threads in (1, 3):
        summary = _summary_on_cpu(w, events, cfg, threads)
        for name in ("count_e", "count_i", "logits", "active_e"):
            torch.testing.assert_close(summary[name], full[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(summary["picked"]["active_i"], full["picked"]["active_i"], rtol=0, atol=0)
        for name in ("raster_e", "raster_i"):
            for part in ("step", "cell"):
                np.testing.assert_array_equal(getattr(summary["picked"][name], part),
                                              getattr(full["picked"][name], part))


def test_the_accuracy_interval_is_wilsons_and_never_zero_wide():
    from engine.whatif import wilson_interval_pct

    low, high = wilson_interval_pct(16, 16)
    assert high == 100.0 and low == pytest.approx(80.64, abs=0.01)  # 16 of 16: at least 80.6 % (95 %)
    low, high = wilson_interval_pct(0, 16)
    assert low == 0.0 and high == pytest.approx(19.36, abs=0.01)
    low, high = wilson_interval_pct(8, 16)
    assert (low + high) / 2 == pytest.approx(50.0) and high - low == pytest.approx(44.0, abs=0.01)


def test_an_image_has_the_spikes_here_that_the_run_page_draws_for_it(tmp_path):
    """The What-if drew its own Poisson input: "image 3" at multipliers 1 had another raster
    than the Run and Coupling pages' image 3. Both now use the evaluation's draw."""
    from engine.inspect import spike_raster
    from engine.rundir import RunDir

    config = Config.from_dict(small_config(t_ms=60.0, ei_strength=0.2, ie_strength=4.0, dtype="float64"))
    weights = init_weights(config)
    run = RunDir(tmp_path / "run")
    run.create(config)
    run.save_arrays("weights_final", {k: v.numpy() for k, v in weights.items()})
    page = spike_raster(run.root, sample=3)
    here = what_if(weights, config, load_tier(config.tier).test, Knobs(sample=3, n_images=5))
    assert len(page["e_cells"]) > 0
    assert here.raster_e.cell.tolist() == page["e_cells"] and here.raster_i.cell.tolist() == page["i_cells"]
    assert (here.raster_e.step * config.dt_ms).tolist() == pytest.approx(page["e_times_ms"])


def test_the_euler_check_is_the_coupling_sweeps_on_the_picked_image():
    """The What-if page's forward-Euler check: the sweep's check (engine.stability) on the
    network at the slider position and the picked image's input spikes; a strong
    coupling crosses h = 2 where the trained one does not."""
    from engine.analyses.coupling import scaled_weights
    from engine.data import Split
    from engine.stability import CheckStopped, forward_euler_check
    from engine.whatif import euler_check

    config = Config.from_dict(small_config(t_ms=50.0, ei_strength=0.2, ie_strength=4.0))
    weights, test = init_weights(config), load_tier(config.tier).test
    trained = euler_check(weights, config, test, Knobs(sample=5))
    strong = euler_check(weights, config, test, Knobs(w_ei_scale=100.0, w_ie_scale=100.0, sample=5))
    assert not trained.unstable and strong.unstable and strong.unstable_share > 0
    assert trained.samples == strong.samples == 1
    picked = Split(test.images[5:6], test.labels[5:6], torch.tensor([5]))
    direct = forward_euler_check(scaled_weights(weights, 100.0, 100.0), picked, simulation_config(config, Knobs()),
                                 samples=1)
    assert strong == direct
    with pytest.raises(ConfigError, match="sample"):
        euler_check(weights, config, test, Knobs(sample=len(test.labels)))
    steps = []  # the page stops a check when the slider moves on: it gives the slot back at once
    with pytest.raises(CheckStopped):
        euler_check(weights, config, test, Knobs(sample=5), should_stop=lambda: steps.append(1) or len(steps) > 3)
    assert len(steps) == 4
    exponential = config.replace(integrator="exponential_euler")  # exact for held conductances: no check
    assert euler_check(weights, exponential, test, Knobs()) is None
