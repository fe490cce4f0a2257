"""Poisson input drawn as events (engine.encoding.poisson_events): the Bernoulli
process MODEL.md asks for, each pixel firing with probability q per step."""

from __future__ import annotations

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
