"""Packed training (engine.packed): each run of a pack gets what it gets alone.

On CPU the pack's runs simulate one by one (the compiled loops have no run axis),
through the same per-run training steps as engine.train, so records and weights
are bit-identical to training alone. The Triton run axis (one set of launches for
the pack) runs in tests/engine/test_packed_triton.py, in the interpreter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import Config, train
from engine.config import ConfigError
from engine.data import Dataset, Split, load_tier
from engine.packed import train_packed
from engine.rundir import RunDir
from engine.train import NonFiniteError, TrainingCancelled

SMALL = dict(n_e=24, n_i=6, t_ms=10.0, epochs=2, batch_size=100, tier="smoke", dtype="float64")
PING = Config(**SMALL, arch="ping", seed=1)
COBA = Config(**SMALL, arch="coba", seed=2, lr=3e-3)


@pytest.fixture(scope="module")
def dataset():
    """200 training images (two batches an epoch) and 100 test images of the smoke tier."""
    full = load_tier("smoke")
    return Dataset(Split(full.train.images[:200], full.train.labels[:200]),
                   Split(full.test.images[:100], full.test.labels[:100]), full.source)


def without_time(records):
    return [{k: v for k, v in r.items() if k != "epoch_s"} for r in records]


def assert_same_run(packed_dir, alone_dir):
    packed, alone = RunDir(packed_dir), RunDir(alone_dir)
    assert without_time(packed.read_metrics()) == without_time(alone.read_metrics())
    for which in ("final", "init"):
        got, want = packed.load_weights(which), alone.load_weights(which)
        assert got.keys() == want.keys()
        for name in want:  # the same code on the same numbers: bit-identical
            assert np.array_equal(got[name].numpy(), want[name].numpy()), (which, name)


@pytest.fixture(scope="module")
def alone(tmp_path_factory, dataset):
    """PING and COBA, each trained alone."""
    root = tmp_path_factory.mktemp("alone")
    for name, config in (("ping", PING), ("coba", COBA)):
        train(config, root / name, dataset=dataset)
    return root


def test_ping_and_coba_packed_each_equal_training_alone(tmp_path, dataset, alone):
    seen = []
    outcomes = train_packed([PING, COBA], [tmp_path / "ping", tmp_path / "coba"], dataset=dataset,
                            on_epoch=lambda k, record: seen.append((k, record["epoch"])))
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for outcome, name in zip(outcomes, ("ping", "coba")):  # the summaries engine.train returns
        assert outcome["epochs"] == 2
        assert outcome["final"]["test_acc"] == RunDir(alone / name).read_metrics()[-1]["test_acc"]
    for name in ("ping", "coba"):
        assert_same_run(tmp_path / name, alone / name)
    assert math.isfinite(RunDir(tmp_path / "coba").read_metrics()[-1]["train_loss"])


def test_stopping_one_run_leaves_the_others_going(tmp_path, dataset, alone):
    checks = {0: 0, 1: 0}

    def should_stop(k: int) -> bool:  # PING stops before its fourth batch (epoch 2, batch 2)
        checks[k] += 1
        return k == 0 and checks[k] > 3

    outcomes = train_packed([PING, COBA], [tmp_path / "ping", tmp_path / "coba"], dataset=dataset,
                            should_stop=should_stop)
    assert isinstance(outcomes[0], TrainingCancelled) and isinstance(outcomes[1], dict)
    assert [r["epoch"] for r in RunDir(tmp_path / "ping").read_metrics()] == [1]
    assert RunDir(tmp_path / "ping").load_checkpoint()["epoch"] == 1
    assert_same_run(tmp_path / "coba", alone / "coba")


def test_each_run_resumes_from_its_own_checkpoint(tmp_path, dataset, alone):
    """A pack killed between two runs' checkpoints: PING is one epoch ahead of COBA.
    Each round trains every run's own next epoch; both end as if never stopped."""
    train(PING.replace(epochs=1), tmp_path / "ping", dataset=dataset)
    replayed = []
    outcomes = train_packed([PING, COBA], [tmp_path / "ping", tmp_path / "coba"], dataset=dataset,
                            on_epoch=lambda k, record: replayed.append((k, record["epoch"])))
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    assert replayed[0] == (0, 1)  # the stored epoch replays first, as engine.train does
    for name in ("ping", "coba"):
        assert_same_run(tmp_path / name, alone / name)


def test_a_run_that_goes_non_finite_fails_alone(tmp_path, dataset, alone):
    blowup = COBA.replace(lr=1e300, seed=3)
    outcomes = train_packed([PING, blowup], [tmp_path / "ping", tmp_path / "blowup"], dataset=dataset)
    assert isinstance(outcomes[1], NonFiniteError), outcomes[1]
    assert_same_run(tmp_path / "ping", alone / "ping")


def test_runs_that_differ_beyond_the_per_run_fields_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="n_e"):
        train_packed([PING, PING.replace(n_e=30)], [tmp_path / "a", tmp_path / "b"])
