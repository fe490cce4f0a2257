"""The service layer without a server: what routers and the dashboard call."""

import asyncio
import os
import threading

import pytest

from engine.analyses import registry
from jobs import worker
from jobs.transport import Assignment, StoreTransport
from jobs.models import Conflict, InvalidRequest, RunKind, RunState
from jobs.paths import DataDir
from jobs.service import JobService, NotFound, flatten
from jobs.store import RunStore

from tests.conftest import small_config


@pytest.fixture
def service(tmp_path):
    data = DataDir.at(tmp_path / "data")
    store = RunStore(data.db_path)
    cancelled: list[str] = []
    service = JobService(store, data, cancel_worker=cancelled.append)
    service.cancelled = cancelled
    yield service
    store.close()


def _succeeded(service):
    run = service.submit_run(small_config())
    service.store.claim_next()
    return service.store.transition(run.id, RunState.SUCCEEDED)


def test_submit_validates_with_the_engine(service):
    with pytest.raises(InvalidRequest) as error:
        service.submit_run(small_config(tau_m_e_ms=0.0))
    assert error.value.field == "tau_m_e_ms"
    run = service.submit_run(small_config())
    assert run.code_version and run.config["v_grad_dampen"] == 1000.0


def test_cancel_running_run_signals_its_worker(service):
    run = service.submit_run(small_config())
    service.store.claim_next()
    assert service.cancel_run(run.id).cancel_requested
    assert service.cancelled == [run.id]


def test_artifact_paths_stay_inside_the_run_folder(service, tmp_path):
    run = _succeeded(service)
    root = service.data.run_dir(run.id)
    (root / "artifacts").mkdir(parents=True)
    (root / "artifacts" / "rates.npz").write_bytes(b"x")
    (tmp_path / "secret").write_text("no")
    os.symlink(tmp_path / "secret", root / "artifacts" / "link")
    assert service.artifact_path(run.id, "artifacts/rates.npz") == (root / "artifacts" / "rates.npz").resolve()
    assert service.data.db_path.exists()
    for name in ("../../spikeboard.db", "../../../secret", str(tmp_path / "secret"), "artifacts/link",
                 "artifacts", "bad\x00name", "artifacts/../../" + run.id + "/artifacts/rates.npz/.."):
        with pytest.raises(NotFound):
            service.artifact_path(run.id, name)
    assert [a["name"] for a in service.list_artifacts(run.id)] == ["artifacts/rates.npz"]


def test_delete_removes_records_and_folder(service):
    run = _succeeded(service)
    service.data.run_dir(run.id).mkdir(parents=True)
    service.delete_run(run.id)
    assert not service.data.run_dir(run.id).exists()
    queued = service.submit_run(small_config())
    with pytest.raises(Conflict):
        service.delete_run(queued.id)


def test_csv_flattens_per_weight_columns(service):
    run = _succeeded(service)
    service.store.record_epoch(run.id, 1, {"epoch": 1, "test_acc": 50.0, "w_norm": {"W_in": 2.0}})
    assert service.metrics_csv(run.id).splitlines() == ["epoch,test_acc,w_norm.W_in", "1,50.0,2.0"]
    assert flatten({"a": {"b": {"c": 1}}}) == {"a.b.c": 1}


def test_events_end_when_the_run_finishes(service):
    run = service.submit_run(small_config())
    claimed = service.store.claim_next()

    async def collect():
        seen = []
        async for event, data in service.events(run.id, poll_s=0.01):
            seen.append((event, data.get("epoch", data.get("state"))))
            if len(seen) == 1:
                service.store.record_epoch(run.id, 1, {"epoch": 1})
                service.store.transition(run.id, RunState.SUCCEEDED, attempt=claimed.attempt)
        return seen

    assert asyncio.run(asyncio.wait_for(collect(), 5)) == [("state", "running"), ("epoch", 1), ("state", "succeeded")]


class _FakeSpec:
    def validate(self, params):
        if params.get("steps", 3) < 1:
            raise ValueError("steps must be >= 1")
        return {"steps": params.get("steps", 3)}


def test_analysis_is_validated_by_its_spec_and_runs_through_the_registry(service, monkeypatch):
    monkeypatch.setattr(registry, "ANALYSES", {"fake": _FakeSpec()}, raising=False)
    calls = []

    def run_analysis(name, source_run, params, out_dir, *, on_progress=None, should_stop=None):
        calls.append((name, source_run, params, out_dir))
        on_progress(1, 1)
        return {"ok": True}

    monkeypatch.setattr(registry, "run_analysis", run_analysis, raising=False)
    source = _succeeded(service)
    with pytest.raises(InvalidRequest) as error:
        service.submit_analysis(source.id, "nope", {})
    assert error.value.field == "name"
    with pytest.raises(InvalidRequest):
        service.submit_analysis(source.id, "fake", {"steps": 0})
    run = service.submit_analysis(source.id, "fake", {})
    assert run.kind is RunKind.ANALYSIS and run.config == {"name": "fake", "params": {"steps": 3}}
    claimed = service.store.claim_next()
    stop = threading.Event()
    transport = StoreTransport(service.data, claimed.id, claimed.attempt)
    worker.execute(Assignment.of(claimed), transport, worker.Heartbeat(transport, stop), stop)
    assert calls == [("fake", service.data.run_dir(source.id), {"steps": 3}, service.data.run_dir(run.id))]


def test_a_training_run_can_be_analysed_at_its_latest_checkpoint(service):
    """A 100-epoch run is worth a look while it trains: weights='last' analyses its
    latest checkpoint (the result says which epoch); final weights still wait for it."""
    import engine
    from engine.analyses.registry import run_analysis
    from engine.rundir import RunDir

    run = service.submit_run(small_config(epochs=1))
    service.store.claim_next()  # running, as under a worker
    with pytest.raises(Conflict, match="no checkpoint yet"):
        service.submit_analysis(run.id, "fi_curve", {"weights": "last", "samples": 4})
    with pytest.raises(Conflict, match="weights='last'"):
        service.submit_analysis(run.id, "fi_curve", {"samples": 4})
    folder = service.data.run_dir(run.id)
    engine.train(engine.Config.from_dict(run.config), folder)  # its first epoch's checkpoint
    assert RunDir(folder).load_checkpoint()["epoch"] == 1
    analysis = service.submit_analysis(run.id, "fi_curve", {"weights": "last", "samples": 4,
                                                            "input_scales": [1.0]})
    assert analysis.source_run_id == run.id
    result = run_analysis("fi_curve", folder, analysis.config["params"], folder.parent / "out")
    assert result["complete"] and result["weights_epoch"] == 1


def test_finished_force_runs_lend_their_pace_even_when_stored_by_older_code(service):
    """The FORCE form's estimate reads every finished FORCE run's work; a run stored before a
    parameter existed (a size run without "trials") lent a KeyError that kept the page from
    opening, and one with a parameter since removed must lend nothing."""
    from jobs.service import force_work, validate_force

    size = validate_force("size", {"config": {"n": 30}, "n_values": [20, 30]})
    del size["trials"]  # as stored before size runs had trials
    stored = {"size": {"experiment": "size", "params": size},
              "removed": {"experiment": "train", "params": {"config": {"n": 30}, "old_knob": 1}},
              "gone": {"experiment": "no_longer_an_experiment", "params": {}}}
    for config in stored.values():
        run = service.store.create_run(RunKind.FORCE, config)
        service.store.claim(run.id, now=run.created_at - 10.0)
        service.store.transition(run.id, RunState.SUCCEEDED)
    (experiment, params, seconds, units), = service.finished_force_work()
    assert experiment == "size" and params["trials"] == 0 and seconds >= 10.0
    assert units == force_work("size", params) > 0
