"""Convergence: no verdict from fewer epochs than the slope window (issue 16)."""

from engine.convergence import WINDOW_EPOCHS, summarise


def _records(accs):
    return [{"epoch": i + 1, "test_acc": a, "train_acc": a, "test_loss": 1.0, "train_loss": 1.0,
             "rate_e_hz": 5.0, "rate_i_hz": 20.0, "active_frac_e": 0.5, "active_frac_i": 0.9}
            for i, a in enumerate(accs)]


def test_one_or_two_epochs_are_not_enough_for_a_verdict():
    for n in (1, 2, WINDOW_EPOCHS - 1):
        s = summarise(_records([50.0] * n))
        assert s["converged"] == {"test_acc": None, "rate_e": None}, n
        assert s["convergence"] == f"not enough epochs ({n} of the {WINDOW_EPOCHS} the slopes need)"
        assert s["slopes"]["window"] == n and s["slopes"]["window_needed"] == WINDOW_EPOCHS


def test_a_full_window_gets_a_verdict():
    flat = summarise(_records([50.0] * WINDOW_EPOCHS))
    assert flat["converged"] == {"test_acc": True, "rate_e": True} and flat["convergence"] == "converged"
    rising = summarise(_records([50.0 + i for i in range(WINDOW_EPOCHS + 3)]))
    assert rising["converged"]["test_acc"] is False and rising["convergence"] == "still moving"
