"""Study bookkeeping in the service: cancellation holds, progress ends at 1."""

import pytest

from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.service import JobService
from jobs.store import RunStore


@pytest.fixture
def service(tmp_path):
    data = DataDir.at(tmp_path / "data")
    store = RunStore(data.db_path)
    yield JobService(store, data)
    store.close()


def _finish(service, run_id, state):
    service.store.transition(run_id, RunState.RUNNING)
    service.store.transition(run_id, state)


def _nb041(service):
    study = service.submit_study("nb041", {"tau_gaba_ms": [6.0, 9.0], "seed": [42], "epochs": 1})
    return study, [m.run_id for m in study.members if m.role == "train"]


def test_a_cancelled_study_queues_no_analyses_later(service):
    study, (first, second) = _nb041(service)
    _finish(service, first, RunState.SUCCEEDED)  # its analysis is not queued yet
    service.cancel_study(study.id)
    after = service.get_study(study.id)  # the page's and the loop's call
    assert after.state is RunState.CANCELLED
    assert not [m for m in after.members if m.role == "analysis"]
    assert service.store.list_runs(kind=RunKind.ANALYSIS)[1] == 0
    assert study.id not in service.store.study_ids_with_unfinished_runs()


def test_a_failed_run_still_lets_progress_reach_one(service):
    study, (first, second) = _nb041(service)
    _finish(service, first, RunState.FAILED)
    _finish(service, second, RunState.SUCCEEDED)
    study = service.get_study(study.id)
    analysis = next(m.run_id for m in study.members if m.role == "analysis")
    _finish(service, analysis, RunState.SUCCEEDED)
    study = service.get_study(study.id)
    assert study.state is RunState.FAILED and study.progress == 1.0


def test_progress_moves_while_the_first_runs_train(service):
    # a study of 100-epoch runs showed 0 % for hours: running members count with their own progress
    study, (first, second) = _nb041(service)
    due = service.get_study(study.id)._members_due()  # 2 training runs + their 2 analyses
    service.store.transition(first, RunState.RUNNING)
    attempt = service.store.get_run(first).attempt
    assert service.store.heartbeat(first, attempt, progress=0.5)
    assert service.get_study(study.id).progress == pytest.approx(0.5 / due)
    service.store.transition(first, RunState.SUCCEEDED)
    assert service.get_study(study.id).progress == pytest.approx(1.0 / due)
