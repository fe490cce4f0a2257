"""engine.whatif: the groups that split a what-if over threads change nothing it answers."""

from __future__ import annotations

import numpy as np
import torch

from engine.config import Config
from engine.data import load_tier
from engine.weights import init_weights
from engine.whatif import Knobs, what_if
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
