"""Poisson input drawn as events (engine.encoding.poisson_events): the Bernoulli
process MODEL.md asks for, each pixel firing with probability q per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Config, poisson_encode, poisson_events


def _events(images, config, seed=0):
    return poisson_events(images, config, torch.Generator().manual_seed(seed))


def test_rate_is_q_per_step_uniform_in_time_and_independent_of_the_last_step():
    config = Config(t_ms=200.0, max_rate_hz=500.0)  # q = 0.05 at intensity 1
    images = torch.full((40, config.n_input), 1.0)
    images[:, 1::2] = 0.5  # q = 0.025
    dense = _events(images, config).to_dense()
    for columns, q in ((slice(0, None, 2), 0.05), (slice(1, None, 2), 0.025)):
        part = dense[:, :, columns].double()
        n = part.numel()
        sd = (q * (1 - q) / (n / 2)) ** 0.5  # of a half's mean
        for half in (part[:1000], part[1000:]):  # the same rate early and late
            assert abs(float(half.mean()) - q) < 5 * sd
        # P(spike at t | spike at t-1) = q: no refractoriness, no bursts
        after_spike = part[1:][part[:-1] > 0]
        sd_after = (q * (1 - q) / after_spike.numel()) ** 0.5
        assert abs(float(after_spike.mean()) - q) < 5 * sd_after


def test_certain_and_silent_pixels_and_tiny_rates():
    config = Config(t_ms=20.0, max_rate_hz=10_000.0)  # q = 1 at intensity 1
    images = torch.zeros(2, config.n_input)
    images[0, 3] = 1.0
    images[1, 5] = 1e-30  # q ~ 1e-30: a gap far past any trial, no overflow
    events = _events(images, config)
    assert events.step.tolist() == list(range(config.n_steps))
    assert set(events.sample.tolist()) == {0} and set(events.channel.tolist()) == {3}
    blank = _events(torch.zeros(3, config.n_input), config)
    assert blank.step.numel() == 0 and blank.to_dense().shape == (config.n_steps, 3, config.n_input)


def test_events_are_sorted_seeded_and_the_dense_encoding_is_the_same_spikes():
    config = Config(t_ms=50.0)
    images = torch.rand(5, config.n_input, generator=torch.Generator().manual_seed(1))
    events = _events(images, config, seed=3)
    assert events.shape == (config.n_steps, 5, config.n_input)
    key = (events.step * 5 + events.sample) * config.n_input + events.channel
    assert bool((key[1:] > key[:-1]).all()), "sorted by (step, sample, channel), no duplicates"
    dense = events.to_dense()
    step, sample, channel = dense.nonzero(as_tuple=True)
    assert torch.equal(step, events.step) and torch.equal(channel, events.channel)
    assert torch.equal(poisson_encode(images, config, torch.Generator().manual_seed(3)), dense)
    assert torch.equal(_events(images, config, seed=3).step, events.step)
    assert not torch.equal(_events(images, config, seed=4).to_dense(), dense)


def test_test_input_is_keyed_on_the_image_not_the_batch():
    """The same split evaluated at batch 7 and batch 30 sees the same spikes, so it
    gives the same accuracy, loss and rates (evaluate.py keyed them on the batch)."""
    from engine.data import Split, load_tier
    from engine.encoding import test_input_events
    from engine.evaluate import evaluate
    from engine.weights import init_weights

    test = load_tier("smoke").test
    images = test.images[:30]
    whole = test_input_events(images, torch.arange(30), Config())
    alone = test_input_events(images[12:13], torch.tensor([12]), Config())
    mine = whole.sample == 12
    assert torch.equal(whole.step[mine], alone.step) and torch.equal(whole.channel[mine], alone.channel)

    config = Config(n_e=40, n_i=10, t_ms=20.0, ei_strength=0.2)
    weights = init_weights(config)
    split = Split(images, test.labels[:30])
    small, large = (evaluate(weights, split, config.replace(batch_size=b)) for b in (7, 30))
    assert small.accuracy_pct == large.accuracy_pct and small.loss == pytest.approx(large.loss, rel=1e-6)
    assert np.array_equal(small.cell_rates_e_hz, large.cell_rates_e_hz)
    assert np.array_equal(small.cell_rates_i_hz, large.cell_rates_i_hz)
