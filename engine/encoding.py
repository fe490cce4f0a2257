"""Poisson input: each pixel p in [0, 1] fires with probability p * max_rate * dt per step."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from engine.config import Config

# Gaps drawn per active pixel and round: most pixels (rate <= 100 Hz, 200 ms) need
# one or two rounds; the loop runs on for the few that fire more.
_GAPS_PER_ROUND = 16


class InputEvents(NamedTuple):
    """Input spikes as events: step index, sample index and channel of each spike."""

    step: torch.Tensor
    sample: torch.Tensor
    channel: torch.Tensor
    shape: tuple[int, int, int]  # (T, B, n_input) of the dense equivalent

    def to(self, device) -> "InputEvents":
        return InputEvents(self.step.to(device), self.sample.to(device), self.channel.to(device), self.shape)

    def to_dense(self, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=dtype, device=self.step.device)
        dense[self.step, self.sample, self.channel] = 1
        return dense

    @classmethod
    def from_dense(cls, spikes: torch.Tensor) -> "InputEvents":
        step, sample, channel = spikes.nonzero(as_tuple=True)
        return cls(step, sample, channel, tuple(spikes.shape))


def poisson_events(images: torch.Tensor, config: Config,
                   generator: torch.Generator | Sequence[torch.Generator],
                   n_steps: int | None = None) -> InputEvents:
    """Poisson input spikes as events, sorted by (step, sample, channel), on the config's device.

    Pixel p fires on each step with probability q = p * max_rate * dt, independently:
    a Bernoulli process, whose gaps between spikes are Geometric(q). Drawing the gaps
    (floor(log U / log(1 - q)) + 1 for U uniform in (0, 1], capped past the trial)
    costs a few numbers per
    spike, where drawing every (step, pixel) costs T x 784 per image: at batch 64 x
    2000 steps, milliseconds instead of most of a second. Fresh spikes on every call;
    the generator (CPU) makes them repeatable. Given one generator per image instead,
    each image's spikes come from its own generator alone, whatever else is in the batch.
    """
    per_image = not isinstance(generator, torch.Generator)
    if per_image and len(generator) != images.shape[0]:
        raise ValueError(f"{len(generator)} generators for {images.shape[0]} images")
    steps = config.n_steps if n_steps is None else n_steps
    prob = (images.to(torch.float32).cpu() * (config.max_rate_hz * config.dt_ms / 1000.0)).clamp(0, 1)
    sample, channel = prob.nonzero(as_tuple=True)
    log_stay = torch.log1p(-prob[sample, channel].double())  # -inf where q = 1: a spike every step
    last = torch.full(sample.shape, -1, dtype=torch.long)  # each pixel's latest spike step
    pixel = torch.arange(sample.numel())
    found = []
    while pixel.numel():
        if per_image:  # pixels are grouped by image (nonzero is row-major), in order
            counts = torch.bincount(sample[pixel], minlength=len(generator)).tolist()
            uniform = 1.0 - torch.cat([torch.rand((n, _GAPS_PER_ROUND), generator=g, dtype=torch.float64)
                                       for g, n in zip(generator, counts) if n])
        else:
            uniform = 1.0 - torch.rand((pixel.numel(), _GAPS_PER_ROUND), generator=generator, dtype=torch.float64)
        gaps = (torch.log(uniform) / log_stay[pixel, None]).floor_().clamp_(max=steps).long() + 1
        at = last[pixel, None] + gaps.cumsum(1)
        hit = at < steps
        found.append((at[hit], pixel[:, None].expand_as(at)[hit]))
        last[pixel] = at[:, -1]
        pixel = pixel[at[:, -1] < steps]
    step = torch.cat([at for at, _ in found] + [torch.zeros(0, dtype=torch.long)])
    owner = torch.cat([who for _, who in found] + [torch.zeros(0, dtype=torch.long)])
    sample, channel = sample[owner], channel[owner]
    batch, n_input = prob.shape
    order = torch.sort((step * batch + sample) * n_input + channel).indices
    events = InputEvents(step[order], sample[order], channel[order], (steps, batch, n_input))
    return events.to(config.torch_device)


def test_input_events(images: torch.Tensor, positions: torch.Tensor, config: Config,
                      tag: str = "test") -> InputEvents:
    """Inference input: image k's spikes come from a generator keyed on (run seed, tag,
    its position in the split), not on the batch it falls in, so a split gives the
    same spikes, and the same numbers, at any batch size."""
    from engine.seeding import batch_generator

    generators = [batch_generator(config.seed, tag, 0, int(k)) for k in positions.tolist()]
    return poisson_events(images, config, generators)


def poisson_encode(images: torch.Tensor, config: Config, generator: torch.Generator | Sequence[torch.Generator],
                   n_steps: int | None = None) -> torch.Tensor:
    """`poisson_events` as a bool tensor [T, B, n_input]: the same spikes, dense."""
    return poisson_events(images, config, generator, n_steps).to_dense()
