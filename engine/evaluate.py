"""Inference over a data split: accuracy, loss, population and per-cell rates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.data import Split
from engine.encoding import test_input_events
from engine.simulate import simulate
from engine.weights import Weights


@dataclass(frozen=True)
class Evaluation:
    accuracy_pct: float
    loss: float
    rate_e_hz: float
    rate_i_hz: float
    active_frac_e: float  # share of E cells that fired at all over the split
    active_frac_i: float
    cell_rates_e_hz: np.ndarray  # [n_e], mean over samples
    cell_rates_i_hz: np.ndarray  # [n_i]
    spikes_e: torch.Tensor | None = None  # bool [T, k, n_e] of the first k samples, if kept
    spikes_i: torch.Tensor | None = None


def batches(n: int, batch_size: int, order: torch.Tensor | None = None):
    """Index tensors of consecutive batches (the last one may be short)."""
    index = torch.arange(n) if order is None else order
    return [index[start:start + batch_size] for start in range(0, n, batch_size)]


@torch.no_grad()
def evaluate(weights: Weights, split: Split, config: Config, tag: str = "test",
             keep_spikes: int = 0) -> Evaluation:
    """Run the split through the network. Input spikes come from generators keyed on
    (seed, tag, image position), so every epoch, and every batch size, sees the same
    test spikes (`test_input_events`). `keep_spikes`
    returns the spike trains of that many leading samples."""
    trial_s = config.n_steps * config.dt_ms / 1000.0
    correct, loss_sum = 0, 0.0
    counts_e = torch.zeros(config.n_e, dtype=torch.float64)
    counts_i = torch.zeros(config.n_i, dtype=torch.float64)
    kept_e, kept_i = [], []
    for index in batches(len(split.labels), config.batch_size):
        x = test_input_events(split.images[index], split.image_ids(index), config, tag)
        keep = sum(k.shape[1] for k in kept_e) < keep_spikes
        out = simulate(weights, x, config, spike_trains=keep)
        labels = split.labels[index].to(config.torch_device)
        loss_sum += float(F.cross_entropy(out["logits"], labels, reduction="sum"))
        correct += int((out["logits"].argmax(-1) == labels).sum())
        counts_e += out["count_e"].sum(0).to(torch.float64).cpu()
        counts_i += out["count_i"].sum(0).to(torch.float64).cpu()
        if keep:
            kept_e.append(out["s_e"].bool().cpu())
            kept_i.append(out["s_i"].bool().cpu())
    n = len(split.labels)
    rates_e = (counts_e / (n * trial_s)).numpy()
    rates_i = (counts_i / (n * trial_s)).numpy()
    return Evaluation(
        accuracy_pct=100.0 * correct / n,
        loss=loss_sum / n,
        rate_e_hz=float(rates_e.mean()),
        rate_i_hz=float(rates_i.mean()),
        active_frac_e=float((counts_e > 0).double().mean()),
        active_frac_i=float((counts_i > 0).double().mean()),
        cell_rates_e_hz=rates_e,
        cell_rates_i_hz=rates_i,
        spikes_e=torch.cat(kept_e, 1)[:, :keep_spikes] if kept_e else None,
        spikes_i=torch.cat(kept_i, 1)[:, :keep_spikes] if kept_i else None,
    )
