"""Fine-tunes (config.init_run): a run that starts from another run's trained weights,
scaled by the What-if multipliers, submitted through the job service and trained by
the worker's own code path."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine import train
from engine.config import Config, ConfigError
from jobs import worker
from jobs.models import Conflict, InvalidRequest, RunState
from jobs.paths import DataDir
from jobs.service import JobService
from jobs.store import RunStore
from jobs.transport import Assignment, StoreTransport
from tests.conftest import small_config

SCALES = {"init_w_in_scale": 1.5, "init_w_ei_scale": 0.5, "init_w_ie_scale": 2.0}
SOURCE = small_config(epochs=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A job service over a store holding one succeeded 1-epoch run (40 E / 10 I, 20 ms)."""
    data = DataDir.at(tmp_path_factory.mktemp("finetune") / "data")
    store = RunStore(data.db_path)
    jobs = JobService(store, data)
    source = jobs.submit_run(SOURCE)
    train(Config.from_dict(source.config), data.run_dir(source.id))
    store.claim_next()
    store.transition(source.id, RunState.SUCCEEDED)
    yield jobs, source
    store.close()


def _run_worker(jobs: JobService, run_id: str) -> None:
    """What a worker process does with a claimed run."""
    run = jobs.store.claim_next()
    assert run.id == run_id
    stop = threading.Event()
    transport = StoreTransport(jobs.data, run.id, run.attempt)
    worker.execute(Assignment.of(run), transport, worker.Heartbeat(transport, stop), stop)


def _weights(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def test_a_fine_tune_starts_from_the_scaled_trained_weights_and_trains(trained):
    jobs, source = trained
    run = jobs.submit_run({**SOURCE, "init_run": source.id, **SCALES})
    assert run.config["init_run"] == source.id and run.config["init_w_ie_scale"] == 2.0  # stored explicitly
    _run_worker(jobs, run.id)

    trained_w = _weights(jobs.data.run_dir(source.id) / "artifacts" / "weights_final.npz")
    start = _weights(jobs.data.run_dir(run.id) / "artifacts" / "weights_init.npz")
    scale = {"W_in": 1.5, "W_ei": 0.5, "W_ie": 2.0, "W_out": 1.0}
    for name, w in trained_w.items():
        # the product in float64, rounded once to the run's float32
        np.testing.assert_array_equal(start[name], (w.astype(np.float64) * scale[name]).astype(np.float32),
                                      err_msg=name)
    assert np.any(trained_w["W_in"] != 0) and np.any(trained_w["W_ie"] != 0)  # the check is not vacuous

    metrics = jobs.metrics(run.id)
    assert [m["epoch"] for m in metrics] == [1]
    assert all(np.isfinite(m["train_loss"]) for m in metrics)
    final = _weights(jobs.data.run_dir(run.id) / "artifacts" / "weights_final.npz")
    assert not np.array_equal(final["W_in"], start["W_in"])  # it trained (W_in, W_out are trainable)
    assert not np.array_equal(final["W_out"], start["W_out"])
    np.testing.assert_array_equal(final["W_ie"], start["W_ie"])  # not trainable: as it started


def test_unscaled_fine_tune_starts_exactly_where_the_source_ended(trained):
    jobs, source = trained
    run = jobs.submit_run({**SOURCE, "init_run": source.id})
    _run_worker(jobs, run.id)
    trained_w = _weights(jobs.data.run_dir(source.id) / "artifacts" / "weights_final.npz")
    start = _weights(jobs.data.run_dir(run.id) / "artifacts" / "weights_init.npz")
    for name in trained_w:
        np.testing.assert_array_equal(start[name], trained_w[name])


def test_a_missing_or_unfinished_source_is_refused_naming_init_run(trained):
    jobs, source = trained
    with pytest.raises(InvalidRequest) as missing:
        jobs.submit_run({**SOURCE, "init_run": "nosuchrun"})
    assert missing.value.field == "init_run" and "does not exist" in missing.value.message
    queued = jobs.submit_run(SOURCE)
    with pytest.raises(Conflict, match="queued"):
        jobs.submit_run({**SOURCE, "init_run": queued.id})
    jobs.cancel_run(queued.id)
    with pytest.raises(InvalidRequest) as shape:  # another network: the weights cannot fit
        jobs.submit_run({**SOURCE, "n_e": 41, "init_run": source.id})
    assert shape.value.field == "n_e"
    before = jobs.list_runs()[1]
    with pytest.raises(InvalidRequest) as grid:
        jobs.submit_sweep(SOURCE, {"init_run": [source.id, "nosuchrun"]})
    assert grid.value.field == "grid.init_run"
    assert jobs.list_runs()[1] == before  # the refused sweep queued nothing


@pytest.mark.parametrize("fields,field", [
    ({"init_w_ei_scale": 2.0}, "init_w_ei_scale"),  # a multiplier of nothing
    ({"init_run": "x", "init_w_in_scale": -1.0}, "init_w_in_scale"),
    ({"init_run": "../other"}, "init_run"),  # a run id names a folder: no paths
    ({"init_run": 7}, "init_run"),
])
def test_bad_start_fields_name_themselves(fields, field):
    with pytest.raises(ConfigError) as error:
        Config.from_dict(fields)
    assert error.value.field == field


def test_the_engine_refuses_a_fine_tune_without_its_start_weights(tmp_path):
    config = Config.from_dict({**SOURCE, "init_run": "abc"})
    with pytest.raises(FileNotFoundError, match="init_run 'abc'"):
        train(config, tmp_path / "run")
