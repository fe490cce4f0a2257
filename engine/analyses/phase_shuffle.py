"""Phase shuffle (nb042): is it the rhythm or the mean of the inhibition that holds E down?

For each test batch the trained network runs closed-loop and its I spike trains
are recorded. E is then run again on the same input with the I->E input replaced
by a rearranged copy of those I spikes, in two readings of the seed's "phase
shuffle" (side by side in the result):

- `shuffled` (cell shuffle): each I cell's train permuted in time independently
  (per sample). Every I cell keeps its spike count, so E gets the same mean
  inhibition, but the volleys dissolve: inhibition becomes nearly tonic. This
  removes I synchrony as well as its phase.
- `volleys` (volley shift): the I population's volleys (runs of steps with I
  spikes, split at silent gaps of at least `VOLLEY_GAP_MS`) each moved as a whole
  to a uniformly random time in the trial (circularly). I keeps its synchrony,
  every cell its count (up to two volleys landing on one cell in one step), but
  the volleys are no longer locked to the E cycle: the rhythm's phase is shuffled,
  its mean and its pulses kept. This is the reading closer to the seed's words
  ("rhythm vs mean-inhibition", a "phase-shuffle"), and the one whose result
  matches the seed's: on trained canonical PING (docs/RESULTS.md, nb042) the volley
  shift releases E (x 2.5-2.6 in three seeds, the seed x 3.2) where the cell shuffle
  lowers it (x 0.26-0.27).

The E-rate release factor is E rate (rearranged) / E rate (closed loop), one per
reading (`release_factor`, `release_factor_volleys`).

E is driven by a recorded I train in one of two ways, by recipe:
- through the input pathway (canonical recipe, fast backend): the I spikes become
  extra input channels whose W_in rows are -W_ie (a negative input weight adds
  GABA conductance with the same decay and the same one-step delay as I->E), and
  the network's own W_ei and W_ie are zero;
- by forcing I (any recipe, e.g. the seed's, whose W_in is sign-clamped and whose
  input arrives on the same step): the reference step loop runs the whole network
  and replaces the I spikes it emits at each step with the recorded train's before
  they reach E on the next step.
Replaying the unshuffled train either way reproduces the closed loop's E spikes
(up to float rounding of one sum), which the result reports as
`rate_e_replay_hz`, a check of the construction.
"""

from __future__ import annotations

from typing import Callable

import torch

from engine.analyses.params import COMMON_DEFAULTS, AnalysisError, common, resumed_cells
from engine.config import Config
from engine.data import Split
from engine.encoding import test_input_events
from engine.evaluate import batches
from engine.inspect import LoadedRun, test_subset
from engine.reference import forward_weights, initial_state, network_params, network_step
from engine.seeding import batch_generator
from engine.simulate import simulate
from engine.weights import Weights

DEFAULTS = dict(COMMON_DEFAULTS)
VOLLEY_GAP_MS = 2.0  # I-silent gap that separates two volleys (a gamma cycle is ~20 ms)


def check(params: dict) -> dict:
    return common(params)


def input_pathway_replays(config: Config) -> bool:
    """Whether I->E can be replayed as extra input channels: not with a sign-clamped
    W_in (it drops the -W_ie rows), nor with same-step input or kick-then-decay
    synapses (input and I->E would arrive with different timing)."""
    return "W_in" not in config.dale_weights and config.input_arrival == "next_step" and \
        config.synapse_order == "decay_then_add"


def driven_by_inhibition(weights: Weights, config: Config) -> tuple[Weights, Config]:
    """The network with I->E replaced by n_i extra (inhibitory) input channels."""
    if not input_pathway_replays(config):
        raise AnalysisError("recipe", f"{config.recipe!r}: the phase shuffle's input-pathway replay "
                                      "needs signed W_in, next-step input and decay-then-add synapses")
    w_in = torch.cat([weights["W_in"], -weights["W_ie"]], dim=0)
    zeros_ei, zeros_ie = torch.zeros_like(weights["W_ei"]), torch.zeros_like(weights["W_ie"])
    return ({"W_in": w_in, "W_ei": zeros_ei, "W_ie": zeros_ie, "W_out": weights["W_out"]},
            config.replace(n_input=config.n_input + config.n_i))


def with_forced_inhibition(weights: Weights, x: torch.Tensor, config: Config,
                           s_i: torch.Tensor) -> dict[str, torch.Tensor]:
    """The closed network with its I spikes replaced by `s_i` [T, B, n_i] on their
    way to E: E spike counts `count_e` [B, n_e] and readout `logits` (the reference
    step, any recipe). With the network's own I train it is the closed loop again."""
    p = network_params(config)
    w = forward_weights(weights, config)
    x = x.to(config.torch_dtype)
    state = initial_state(x.shape[1], config, p)
    count_e = torch.zeros(x.shape[1], config.n_e, dtype=x.dtype, device=x.device)
    u_sum = torch.zeros_like(state.u)
    for x_t, forced in zip(x.unbind(0), s_i.to(x.dtype).unbind(0)):
        s_e, _, state = network_step(state, x_t, w, p)
        state = state._replace(s_i_prev=forced)  # what reaches E on the next step
        count_e = count_e + s_e
        u_sum = u_sum + state.u_read
    return {"count_e": count_e, "logits": u_sum / x.shape[0]}


def shuffle_time(spikes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute [T, B, n] along time independently for every (sample, cell)."""
    order = torch.rand(spikes.shape, generator=generator).argsort(dim=0).to(spikes.device)
    return spikes.gather(0, order)


def volleys(active: torch.Tensor, gap_steps: int) -> list[tuple[int, int]]:
    """[start, end) step ranges of the runs of True in `active` [T], merging runs
    separated by fewer than `gap_steps` False steps."""
    steps = active.nonzero().flatten().tolist()
    out: list[list[int]] = []
    for t in steps:
        if out and t - out[-1][1] < gap_steps:
            out[-1][1] = t + 1
        else:
            out.append([t, t + 1])
    return [(a, b) for a, b in out]


def shift_volleys(spikes: torch.Tensor, generator: torch.Generator, gap_steps: int) -> torch.Tensor:
    """Move each I volley of each sample, whole, to a uniformly random start (circular)."""
    steps = spikes.shape[0]
    out = torch.zeros_like(spikes)
    for b in range(spikes.shape[1]):
        for start, end in volleys(spikes[:, b].any(-1).cpu(), gap_steps):
            shift = int(torch.randint(steps, (1,), generator=generator))
            target = (torch.arange(start, end) + shift) % steps
            out[target.to(spikes.device), b] |= spikes[start:end, b]
    return out


def _counts(out: dict, labels: torch.Tensor) -> tuple[float, int]:
    return float(out["count_e"].sum()), int((out["logits"].argmax(-1) == labels).sum())


def _replayer(weights: Weights, config: Config) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    """(input x, I train) -> E driven by that I train, the fastest way the recipe allows."""
    if not input_pathway_replays(config):
        return lambda x, s_i: with_forced_inhibition(weights, x, config, s_i)
    replay_w, replay_config = driven_by_inhibition(weights, config)
    return lambda x, s_i: simulate(replay_w, torch.cat([x, s_i.to(x.dtype)], dim=2), replay_config,
                                   spike_trains=False)


@torch.no_grad()
def phase_shuffle(weights: Weights, config: Config, split: Split, on_batch: Callable[[dict], None],
                  skip: int = 0) -> None:
    """Per test batch: E spikes and correct answers closed-loop, replayed and shuffled.
    The first `skip` batches (a stopped attempt's) are not run: each batch's shuffles
    draw from a generator keyed on the batch, so the rest come out as in one go."""
    replay = _replayer(weights, config)
    gap = max(1, int(round(VOLLEY_GAP_MS / config.dt_ms)))
    for b, index in list(enumerate(batches(len(split.labels), config.batch_size)))[skip:]:
        x = test_input_events(split.images[index], split.image_ids(index), config).to_dense()
        labels = split.labels[index].to(config.torch_device)
        closed = simulate(weights, x, config)
        s_i = closed["s_i"].to(torch.bool)
        shuffled = shuffle_time(s_i, batch_generator(config.seed, "phase-shuffle", 0, b))
        shifted = shift_volleys(s_i, batch_generator(config.seed, "volley-shift", 0, b), gap)
        replayed, moved, jumped = replay(x, s_i), replay(x, shuffled), replay(x, shifted)
        (e_closed, ok_closed), (e_replay, _), (e_shuffled, ok_shuffled), (e_volleys, ok_volleys) = (
            _counts(closed, labels), _counts(replayed, labels), _counts(moved, labels), _counts(jumped, labels))
        on_batch({"batch": b, "samples": len(index), "spikes_e": e_closed, "spikes_e_replay": e_replay,
                  "spikes_e_shuffled": e_shuffled, "spikes_e_volleys": e_volleys, "spikes_i": float(s_i.sum()),
                  "spikes_i_volleys": float(shifted.sum()),
                  "correct": ok_closed, "correct_shuffled": ok_shuffled, "correct_volleys": ok_volleys})


def summarise(cells: list[dict], config: Config) -> dict:
    n = sum(c["samples"] for c in cells)
    per_e = n * config.n_e * config.n_steps * config.dt_ms / 1000.0  # cell-seconds

    def rate(key: str) -> float:
        return sum(c[key] for c in cells) / per_e

    closed = rate("spikes_e")
    return {
        "samples": n, "rate_e_hz": closed, "rate_e_replay_hz": rate("spikes_e_replay"),
        "rate_e_shuffled_hz": rate("spikes_e_shuffled"),
        "rate_i_hz": sum(c["spikes_i"] for c in cells) / (n * config.n_i * config.n_steps * config.dt_ms / 1000.0),
        "rate_e_volleys_hz": rate("spikes_e_volleys"),
        "release_factor": rate("spikes_e_shuffled") / closed if closed > 0 else None,
        "release_factor_volleys": rate("spikes_e_volleys") / closed if closed > 0 else None,
        "test_acc": 100.0 * sum(c["correct"] for c in cells) / n,
        "test_acc_shuffled": 100.0 * sum(c["correct_shuffled"] for c in cells) / n,
        "test_acc_volleys": 100.0 * sum(c["correct_volleys"] for c in cells) / n,
    }


def run(source: LoadedRun, params: dict, report: Callable[[dict], None], resume: dict | None = None) -> dict:
    config, weights = source
    split = test_subset(config, params["samples"])
    total = len(batches(len(split.labels), config.batch_size))
    cells = resumed_cells(resume)
    result = {"name": "phase_shuffle", "samples": len(split.labels), "cells": cells, "total": total,
              "summary": summarise(cells, config) if cells else {}}

    def on_batch(cell: dict) -> None:
        result["cells"].append(cell)
        result["summary"] = summarise(result["cells"], config)
        report(result)

    phase_shuffle(weights, config, split, on_batch, skip=len(cells))
    return result
