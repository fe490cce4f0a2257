"""The public simulation entry point: `simulate(weights, input_spikes, config)`."""

from __future__ import annotations

import torch

from engine.config import Config
from engine.encoding import InputEvents
from engine.reference import simulate_reference
from engine.weights import Weights


def simulate(weights: Weights, input_spikes: torch.Tensor | InputEvents, config: Config,
             record_voltage: bool = False, spike_trains: bool = True) -> dict[str, torch.Tensor]:
    """E and I spike trains s_e / s_i [T, B, n], spike counts count_e / count_i [B, n]
    and readout logits [B, n_out] for 0/1 input spikes [T, B, n_input] (or
    `InputEvents`), with the backend the config names. All are differentiable.
    Without `spike_trains` the trains are left out (the fast backend then never
    builds them: at batch 64 they are half a gigabyte per call).

    Every backend follows MODEL.md's step conventions, so all return the same
    spikes in float64 for the same weights and input.
    """
    shape = input_spikes.shape if isinstance(input_spikes, InputEvents) else tuple(input_spikes.shape)
    if len(shape) != 3 or shape[2] != config.n_input:
        raise ValueError(f"input_spikes must be [T, B, {config.n_input}], got {list(shape)}")
    if config.backend == "fast":
        from engine.fast import simulate_fast  # beside the reference, same contract

        return simulate_fast(weights, input_spikes, config, record_voltage, spike_trains)
    if isinstance(input_spikes, InputEvents):
        input_spikes = input_spikes.to_dense()
    return simulate_reference(weights, input_spikes, config, record_voltage, spike_trains)
