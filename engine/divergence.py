"""Has a run diverged? Signs in its epoch records that training blew up though
every number stayed finite (a NaN or inf fails the run instead: train.NonFiniteError).

Three signs, each a reason string; a run with any of them is flagged:
- its training loss is LOSS_FACTOR times its epoch-1 value or more;
- after CHANCE_AFTER_EPOCHS epochs its test accuracy is still within
  CHANCE_MARGIN_PP of chance (100 / n_out %) while its loss grew;
- its E or I population fires at RATE_CEILING_FRACTION of the refractory
  ceiling (1000 / t_ref ms) or more: every cell spikes as fast as it can.
"""

from __future__ import annotations

from typing import Any

from engine.config import Config

LOSS_FACTOR = 100.0
CHANCE_AFTER_EPOCHS = 3
CHANCE_MARGIN_PP = 2.0
RATE_CEILING_FRACTION = 0.8


def divergence_reasons(records: list[dict[str, Any]], config: Config) -> list[str]:
    """Why the run whose epochs so far are `records` looks diverged ([] if it does not)."""
    if not records:
        return []
    first, last = records[0], records[-1]
    reasons = []
    loss0, loss = first["train_loss"], last["train_loss"]
    if loss0 > 0 and loss >= LOSS_FACTOR * loss0:
        reasons.append(f"training loss {loss:.3g} is {loss / loss0:.3g}x its epoch-1 value {loss0:.3g}")
    chance = 100.0 / config.n_out
    if last["epoch"] >= CHANCE_AFTER_EPOCHS and abs(last["test_acc"] - chance) <= CHANCE_MARGIN_PP and loss > loss0:
        reasons.append(f"test accuracy {last['test_acc']:.1f} % is chance ({chance:.0f} %) after "
                       f"{last['epoch']} epochs while the loss grew")
    for population, rate, t_ref in (("E", last["rate_e_hz"], config.t_ref_e_ms),
                                    ("I", last["rate_i_hz"], config.t_ref_i_ms)):
        if t_ref > 0 and rate >= RATE_CEILING_FRACTION * 1000.0 / t_ref:
            reasons.append(f"{population} rate {rate:.0f} Hz is at the refractory ceiling ({1000.0 / t_ref:.0f} Hz)")
    return reasons
