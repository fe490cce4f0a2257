"""Dropping and adding spikes (nb037) in a trained network, inside the loop.

Every E spike a cell emits is what its targets (the I cells and the readout)
would receive; here a perturbation stands between the two:
- drop f: each emitted E spike is delivered with probability 1 - f (a transmission
  failure: the cell itself still fired and reset);
- add f: on top of the emitted spikes, every E cell delivers extra Poisson spikes
  at f times the unperturbed population E rate of the same batch, so adding f
  delivers about as many extra spikes as dropping f removes.
Per condition: emitted and delivered E rate, I rate, accuracy, the gamma peak and
prominence of the delivered E train, `spike_change` (emitted E spikes that differ
from the unperturbed run on the same input, as a share of the unperturbed count),
`pattern_change` (mean over samples of 1 - cosine between the per-cell counts of
delivered E spikes and the unperturbed ones: the change the readout sees, apart
from scale) and whether the cycle survives: delivered prominence at least half the
unperturbed one with the peak within 20 % of the unperturbed peak frequency.
The summary's `curves` give, per mode, those figures against the fraction, the
unperturbed run as fraction 0 (the seed's inference-only sweep, nb037 preset:
fractions 0.1 .. 1).

The time loop is the reference network step (engine.reference), so this runs at
reference speed whatever the config's backend.
"""

from __future__ import annotations

from typing import Callable

import torch

from engine.analyses.measure import SPECTRUM_SAMPLES, gamma_peak
from engine.analyses.params import COMMON_DEFAULTS, common, number_list
from engine.config import Config
from engine.data import Split
from engine.encoding import test_input_events
from engine.evaluate import batches
from engine.inspect import LoadedRun, test_subset
from engine.reference import forward_weights, initial_state, network_params, network_step
from engine.seeding import batch_generator
from engine.weights import Weights

DEFAULTS = {"fractions": [0.1, 0.25, 0.5], **COMMON_DEFAULTS}
STATE_FORMAT = 2  # of the saved state (1 kept the E trains themselves)
CURVE_KEYS = ("test_acc", "rate_e_hz", "rate_e_delivered_hz", "rate_i_hz", "gamma_prominence", "cycle_survives")
MODES = ("drop", "add")
Perturb = Callable[[torch.Tensor], torch.Tensor]


def check(params: dict) -> dict:
    return {**common(params), "fractions": number_list(params, "fractions", 0.0, 1.0, 10)}


@torch.no_grad()
def run_perturbed(weights: Weights, x: torch.Tensor, config: Config, perturb: Perturb | None) -> dict:
    """The reference loop with `perturb(emitted E spikes) -> delivered E spikes` between
    E and its targets; returns emitted/delivered E spikes, I spikes and logits."""
    p = network_params(config)
    w = forward_weights(weights, config)
    state = initial_state(x.shape[1], config, p)
    emitted, delivered, s_i_all = [], [], []
    u_sum = torch.zeros_like(state.u)
    for x_t in x.to(config.torch_dtype).unbind(0):
        # targets see the delivered train: the readout now, I on the next step
        s_e, s_i, state = network_step(state, x_t, w, p, deliver=perturb)
        u_sum = u_sum + state.u_read
        emitted.append(s_e.bool())
        delivered.append(state.s_e_prev.bool())
        s_i_all.append(s_i.bool())
    return {"s_e": torch.stack(emitted), "delivered": torch.stack(delivered), "s_i": torch.stack(s_i_all),
            "logits": u_sum / x.shape[0]}


def make_perturb(mode: str, fraction: float, base_rate_hz: float, config: Config,
                 generator: torch.Generator) -> Perturb:
    def drop(s_e: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(s_e.shape, generator=generator).to(s_e.device) >= fraction
        return s_e * keep

    def add(s_e: torch.Tensor) -> torch.Tensor:
        p_extra = fraction * base_rate_hz * config.dt_ms / 1000.0
        extra = torch.rand(s_e.shape, generator=generator).to(s_e.device) < p_extra
        return torch.maximum(s_e, extra.to(s_e.dtype))

    return drop if mode == "drop" else add


def conditions(fractions: list[float]) -> list[tuple[str, float]]:
    return [("none", 0.0)] + [(mode, f) for mode in MODES for f in fractions]


@torch.no_grad()
def drop_add_spikes(weights: Weights, config: Config, split: Split, fractions: list[float],
                    on_batch: Callable[[list[dict], int], None], resume: dict | None = None) -> None:
    """Accumulates per-condition sums over the test batches; `on_batch(sums, batches done)` gets
    them after each. `resume` ({"sums", "batches"}, what an earlier on_batch got) goes on from there:
    each batch's draws are keyed on the batch, so the sums end as an uninterrupted run's."""
    trial_s = config.n_steps * config.dt_ms / 1000.0
    sums = resume["sums"] if resume else [
        {"mode": m, "fraction": f, "samples": 0, "spikes_e": 0.0, "delivered_e": 0.0, "spikes_i": 0.0,
         "changed_e": 0.0, "pattern_change": 0.0, "correct": 0, "kept": []} for m, f in conditions(fractions)]
    skip = resume["batches"] if resume else 0
    for b, index in enumerate(batches(len(split.labels), config.batch_size)):
        if b < skip:
            continue
        x = test_input_events(split.images[index], split.image_ids(index), config).to_dense()
        labels = split.labels[index].to(config.torch_device)
        base = run_perturbed(weights, x, config, None)
        base_rate = float(base["s_e"].sum()) / (len(index) * config.n_e * trial_s)
        for k, acc in enumerate(sums):
            if acc["mode"] == "none":
                out = base
            else:
                gen = batch_generator(config.seed, f"{acc['mode']}-spikes", k, b)
                out = run_perturbed(weights, x, config, make_perturb(acc["mode"], acc["fraction"], base_rate,
                                                                    config, gen))
            acc["samples"] += len(index)
            acc["spikes_e"] += float(out["s_e"].sum())
            acc["delivered_e"] += float(out["delivered"].sum())
            acc["spikes_i"] += float(out["s_i"].sum())
            acc["changed_e"] += float((out["s_e"] != base["s_e"]).sum())
            acc["pattern_change"] += float(pattern_change(out["delivered"], base["delivered"]).sum())
            acc["correct"] += int((out["logits"].argmax(-1) == labels).sum())
            room = SPECTRUM_SAMPLES - sum(t.shape[1] for t in acc["kept"])
            if room > 0:  # the spectrum needs E's population count per step, not the cells' trains
                acc["kept"].append(population_count(out["delivered"][:, :room]))
        on_batch(sums, b + 1)


def population_count(spikes: torch.Tensor) -> torch.Tensor:
    """Spikes [T, B, N] -> [T, B, 1]: the population's spike count per step (float64, exact),
    all the gamma spectrum uses of them. It scales the population rate by N, which moves
    neither the spectrum's peak nor its prominence (a ratio of powers); the trains of 32
    samples x 21 conditions took GBs of memory, and as much again in a saved state."""
    return spikes.to(torch.float64).sum(-1, keepdim=True).cpu()


def pattern_change(delivered: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Per sample, 1 - cosine between the per-cell delivered E spike counts and the
    unperturbed ones: how much the pattern the readout sees moved, whatever its scale."""
    a, b = delivered.sum(0).double(), base.sum(0).double()
    cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-12)
    return 1.0 - cosine


def summarise(sums: list[dict], config: Config) -> list[dict]:
    trial_s = config.n_steps * config.dt_ms / 1000.0
    cells = []
    for acc in sums:
        n = acc["samples"]
        cells.append({
            "mode": acc["mode"], "fraction": acc["fraction"],
            "rate_e_hz": acc["spikes_e"] / (n * config.n_e * trial_s),
            "rate_e_delivered_hz": acc["delivered_e"] / (n * config.n_e * trial_s),
            "rate_i_hz": acc["spikes_i"] / (n * config.n_i * trial_s),
            "test_acc": 100.0 * acc["correct"] / n,
            "spike_change": acc["changed_e"] / max(sums[0]["spikes_e"], 1.0),
            "pattern_change": acc["pattern_change"] / n,
            **gamma_peak(torch.cat(acc["kept"], 1), config.dt_ms),
        })
    base = cells[0]
    for cell in cells:
        cell["cycle_survives"] = survives(cell, base)
    return cells


def curves(cells: list[dict]) -> dict[str, list[dict]]:
    """Per mode, the sweep as curves over the fraction, the unperturbed run at 0."""
    base = [c for c in cells if c["mode"] == "none"]
    return {mode: [{"fraction": c["fraction"], **{k: c.get(k) for k in CURVE_KEYS}}
                   for c in base + sorted((c for c in cells if c["mode"] == mode), key=lambda c: c["fraction"])]
            for mode in MODES}


def survives(cell: dict, base: dict) -> bool | None:
    if base["gamma_peak_hz"] is None or not base["gamma_prominence"]:
        return None  # no cycle to begin with (or a trial too short to tell)
    if cell["gamma_peak_hz"] is None:
        return False
    close = abs(cell["gamma_peak_hz"] - base["gamma_peak_hz"]) <= 0.2 * base["gamma_peak_hz"]
    return close and cell["gamma_prominence"] >= 0.5 * base["gamma_prominence"]


def run(source: LoadedRun, params: dict, report: Callable[..., None], resume: dict | None = None) -> dict:
    config, weights = source
    split = test_subset(config, params["samples"])
    total = len(batches(len(split.labels), config.batch_size))
    result = {"name": "drop_add_spikes", "samples": len(split.labels), "cells": [], "done": 0, "total": total}

    def on_batch(sums: list[dict], done: int) -> None:
        result["done"] = done
        result["cells"] = summarise(sums, config)
        result["summary"] = {"curves": curves(result["cells"])}
        # the sums: a restart goes on from here
        report(result, state={"format": STATE_FORMAT, "sums": sums, "batches": done})

    state = resume["state"] if resume else None
    if state is not None and state.get("format") != STATE_FORMAT:
        state = None  # saved by an older version of this analysis: start over
    drop_add_spikes(weights, config, split, params["fractions"], on_batch, resume=state)
    return result
