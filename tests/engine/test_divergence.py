"""Non-finite training fails the run with a clear reason; diverged training is flagged (issue 18, items 6-7)."""

import json

import pytest

from engine.config import Config
from engine.divergence import divergence_reasons
from engine.train import NonFiniteError, train

TINY = dict(n_e=40, n_i=10, t_ms=20.0, batch_size=50, backend="fast", tier="smoke")


def _record(epoch, loss, acc=50.0, rate_e=10.0, rate_i=20.0):
    return {"epoch": epoch, "train_loss": loss, "test_acc": acc, "rate_e_hz": rate_e, "rate_i_hz": rate_i}


def test_divergence_signs():
    config = Config()
    assert divergence_reasons([_record(1, 2.3), _record(2, 1.9)], config) == []
    assert "epoch-1 value" in divergence_reasons([_record(1, 2.3), _record(2, 1e9)], config)[0]
    chance = divergence_reasons([_record(1, 2.3, acc=10.0), _record(2, 2.4), _record(3, 2.5, acc=10.4)], config)
    assert any("chance" in r for r in chance)
    ceiling = divergence_reasons([_record(1, 2.3, rate_e=460.0)], config)  # t_ref_e 2 ms: 500 Hz
    assert ceiling == ["E rate 460 Hz is at the refractory ceiling (500 Hz)"]


@pytest.mark.parametrize("lr, words", [(3e38, "optimiser step overflowed"), (1e30, "became (nan|inf|-inf)|non-finite")])
def test_non_finite_training_fails_with_where_and_why(tmp_path, lr, words):
    with pytest.raises(NonFiniteError, match=words) as failed:
        train(Config(**TINY, epochs=1, lr=lr), tmp_path / "run")
    assert "epoch 1" in str(failed.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or \
        "Infinity" not in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_a_blown_up_run_is_flagged_in_its_record_and_summary(tmp_path):
    summary = train(Config(**TINY, epochs=1, lr=1e6), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "refractory ceiling" in record["divergence"] and summary["divergence"] == record["divergence"]
