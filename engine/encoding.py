"""Poisson input: each pixel p in [0, 1] fires with probability p * max_rate * dt per step."""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.config import Config

# Steps drawn per call to the generator: bounds the float buffer to
# chunk x batch x n_input whatever the trial length.
_CHUNK_STEPS = 250


class InputEvents(NamedTuple):
    """Input spikes as events: step index, sample index and channel of each spike."""

    step: torch.Tensor
    sample: torch.Tensor
    channel: torch.Tensor
    shape: tuple[int, int, int]  # (T, B, n_input) of the dense equivalent

    def to_dense(self, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=dtype, device=self.step.device)
        dense[self.step, self.sample, self.channel] = 1
        return dense

    @classmethod
    def from_dense(cls, spikes: torch.Tensor) -> "InputEvents":
        step, sample, channel = spikes.nonzero(as_tuple=True)
        return cls(step, sample, channel, tuple(spikes.shape))


def poisson_encode(images: torch.Tensor, config: Config, generator: torch.Generator,
                   n_steps: int | None = None) -> torch.Tensor:
    """Bool spikes [T, B, n_input] from intensities `images` [B, n_input] in [0, 1].

    Fresh spikes on every call; the generator (CPU) makes them repeatable.
    """
    steps = config.n_steps if n_steps is None else n_steps
    prob = (images.to(torch.float32).cpu() * (config.max_rate_hz * config.dt_ms / 1000.0)).clamp(0, 1)
    chunks = []
    for start in range(0, steps, _CHUNK_STEPS):
        length = min(_CHUNK_STEPS, steps - start)
        draw = torch.rand((length, *prob.shape), generator=generator)
        chunks.append(draw < prob)
    return torch.cat(chunks).to(config.torch_device)
