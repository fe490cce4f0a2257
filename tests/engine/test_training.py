import importlib
import json
import math

import numpy as np
import pytest
import torch

from engine import NonFiniteError, TrainingCancelled, train
from engine.rundir import RunDir
from tests.conftest import tiny_config


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("arch", ["ping", "coba"])
def test_smoke_training_learns_well_above_chance(arch, backend, tmp_path):
    config = tiny_config(arch=arch, backend=backend, epochs=3)
    records = []
    summary = train(config, tmp_path, on_epoch=records.append)
    accs = [r["test_acc"] for r in records]
    print(arch, backend, "test accuracy by epoch:", accs, "E rate:", [round(r["rate_e_hz"], 1) for r in records])
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert accs[-1] >= 40.0  # chance is 10 %
    assert summary["final"]["test_acc"] == accs[-1]
    assert set(records[-1]["w_norm"]) == set(records[-1]["grad_ratio"]) == {"W_in", "W_out"}
    if arch == "coba":
        assert all(r["rate_i_hz"] == 0 for r in records)


def test_run_folder_layout(tmp_path):
    config = tiny_config(epochs=2)
    summary = train(config, tmp_path)
    run = RunDir(tmp_path)
    assert run.read_config() == config
    lines = run.metrics_path.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads(run.summary_path.read_text()) == summary
    assert set(summary["slopes"]) == {"test_acc_pp_per_epoch", "rate_e_hz_per_epoch", "window", "window_needed"}
    for name in ("weights_init", "weights_final", "rates"):
        assert (run.artifacts / f"{name}.npz").exists()
    init, final = run.load_weights("init"), run.load_weights("final")
    assert not torch.equal(init["W_in"], final["W_in"]) and torch.equal(init["W_ie"], final["W_ie"])


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    config = tiny_config(epochs=3)
    straight = tmp_path / "straight"
    train(config, straight)

    interrupted = tmp_path / "interrupted"
    seen = []

    def stop_in_epoch_two() -> bool:
        return len(seen) == 1  # first batch of epoch 2

    with pytest.raises(TrainingCancelled):
        train(config, interrupted, on_epoch=seen.append, should_stop=stop_in_epoch_two)
    # per-cell rates are written after every epoch, not only at the end (a long run's are seen while it trains)
    with np.load(RunDir(interrupted).artifacts / "rates.npz") as rates:
        assert int(rates["epoch"]) == 1 and rates["rate_e_hz"].mean() == pytest.approx(seen[0]["rate_e_hz"])
    replayed = []
    train(config, interrupted, on_epoch=replayed.append)
    assert [r["epoch"] for r in replayed] == [1, 2, 3]  # epoch 1 replayed from the folder

    def without_time(records):
        return [{k: v for k, v in r.items() if k != "epoch_s"} for r in records]

    assert without_time(RunDir(interrupted).read_metrics()) == without_time(RunDir(straight).read_metrics())
    assert torch.equal(RunDir(interrupted).load_weights("final")["W_in"],
                       RunDir(straight).load_weights("final")["W_in"])
    with np.load(RunDir(interrupted).artifacts / "rates.npz") as rates:
        assert int(rates["epoch"]) == 3


def test_nan_loss_fails_with_reason_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(epochs=3)
    # the package exports the function `train`, which hides the module's name
    train_module = importlib.import_module("engine.train")
    real_simulate = train_module.simulate
    calls = {"n": 0}

    def poisoned(weights, x, cfg, **options):
        out = real_simulate(weights, x, cfg, **options)
        calls["n"] += 1
        if calls["n"] > 4:  # epoch 1 has 4 batches of 100
            out["logits"] = out["logits"] * math.nan
        return out

    monkeypatch.setattr(train_module, "simulate", poisoned)
    with pytest.raises(NonFiniteError, match="loss became nan in epoch 2, batch 1"):
        train(config, tmp_path)
    checkpoint = RunDir(tmp_path).load_checkpoint()
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(w).all() for w in checkpoint["weights"].values())


def test_resume_refuses_a_different_config(tmp_path):
    train(tiny_config(epochs=1), tmp_path)
    with pytest.raises(ValueError, match="another config"):
        train(tiny_config(epochs=2, lr=0.1), tmp_path)
    summary = train(tiny_config(epochs=2), tmp_path)  # more epochs is a continuation
    assert summary["epochs"] == 2


def test_train_loss_is_cross_entropy_and_each_regulariser_is_recorded_apart(tmp_path):
    """A rate penalty toward 1000 Hz is huge: an E cell fires at most once per 21 steps
    (t_ref 2 ms at dt 0.1 ms), 10 spikes in a 20 ms trial, 500 Hz, so the term is at least
    (1000 - 500)^2 = 2.5e5. The record's train_loss must stay a cross-entropy (ln 10 =
    2.3 at chance), with each penalty in its own column."""
    small = dict(n_e=40, n_i=10, t_ms=20.0, batch_size=200, epochs=1)
    # the readout-membrane penalty is the reference backend's only (the fast one refuses it)
    config = tiny_config(**small, rate_reg_weight=1.0, rate_target_hz=1000.0, mem_reg_weight=0.5, mem_theta=0.0,
                         backend="reference")
    records = []
    train(config, tmp_path, on_epoch=records.append)
    record = records[0]
    assert 0 < record["train_loss"] < 10
    assert 2.5e5 <= record["train_rate_reg"] <= 1e6
    assert record["train_mem_reg"] > 0
    off = []
    train(tiny_config(**small), tmp_path / "off", on_epoch=off.append)
    assert off[0]["train_rate_reg"] == off[0]["train_mem_reg"] == 0.0


def test_seed_recipe_trains_with_dale_projection_and_skips_non_finite_steps(tmp_path, monkeypatch):
    """The seed recipe's training loop: W_in / W_out stay >= 0 after every step (pinglab's
    project_dales) and a non-finite step is dropped instead of ending the run."""
    from engine.data import Dataset, Split, load_tier

    full = load_tier("smoke")
    small = Dataset(Split(full.train.images[:96], full.train.labels[:96]),
                    Split(full.test.images[:16], full.test.labels[:16]), full.source)
    config = tiny_config(recipe="seed", backend="reference", epochs=1, lr=1e-2, n_e=40, n_i=10, t_ms=20.0, batch_size=32)
    train_module = importlib.import_module("engine.train")
    real_simulate = train_module.simulate
    calls = {"n": 0}

    def one_poisoned_batch(weights, x, cfg, **options):
        out = real_simulate(weights, x, cfg, **options)
        calls["n"] += 1
        if calls["n"] == 2:
            out["logits"] = out["logits"] * math.nan
        return out

    monkeypatch.setattr(train_module, "simulate", one_poisoned_batch)
    records = []
    train(config, tmp_path, on_epoch=records.append, dataset=small)
    assert records[0]["skipped_steps"] == 1 and math.isfinite(records[0]["train_loss"])
    final = RunDir(tmp_path).load_checkpoint()["weights"]
    assert all(bool((final[name] >= 0).all()) for name in ("W_in", "W_out"))
