"""Convergence of a run: least-squares slopes over its last epochs (MODEL.md)."""

from __future__ import annotations

from typing import Any

import numpy as np

WINDOW_EPOCHS = 10
ACC_TOLERANCE_PP = 0.1  # |slope| below this (pp/epoch) counts as converged
RATE_TOLERANCE_HZ = 0.05  # Hz/epoch


def slope(values: list[float]) -> float:
    """Least-squares slope per epoch; 0.0 for fewer than two points."""
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(values), dtype=np.float64), np.asarray(values, dtype=np.float64), 1)[0])


def not_enough_epochs(epochs: int, window: int = WINDOW_EPOCHS) -> str:
    return f"not enough epochs ({epochs} of the {window} the slopes need)"


def summarise(records: list[dict[str, Any]], window: int = WINDOW_EPOCHS) -> dict[str, Any]:
    """Final figures, slopes over the last `window` epochs and the converged flags.

    A run shorter than the window gets slopes over what it has (`slopes.window` says
    how many epochs) but no verdict: its flags are None and `convergence` says why.
    A slope of 0 over one or two epochs says nothing about convergence."""
    if not records:
        raise ValueError("no epochs to summarise")
    tail = records[-window:]
    acc_slope = slope([r["test_acc"] for r in tail])
    rate_slope = slope([r["rate_e_hz"] for r in tail])
    final = records[-1]
    if len(tail) < window:
        converged: dict[str, bool | None] = {"test_acc": None, "rate_e": None}
        verdict = not_enough_epochs(len(tail), window)
    else:
        converged = {"test_acc": abs(acc_slope) < ACC_TOLERANCE_PP, "rate_e": abs(rate_slope) < RATE_TOLERANCE_HZ}
        verdict = "converged" if all(converged.values()) else "still moving"
    return {
        "epochs": final["epoch"],
        "final": {key: final[key] for key in (
            "test_acc", "train_acc", "test_loss", "train_loss", "rate_e_hz", "rate_i_hz",
            "active_frac_e", "active_frac_i")},
        "slopes": {"test_acc_pp_per_epoch": acc_slope, "rate_e_hz_per_epoch": rate_slope,
                   "window": len(tail), "window_needed": window},
        "converged": converged,
        "convergence": verdict,
    }
