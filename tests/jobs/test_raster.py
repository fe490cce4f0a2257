"""Spike rasters of a trained run, through the service the API and dashboard share."""

import pytest

from engine import train
from engine.config import Config
from jobs.models import Conflict, InvalidRequest, RunKind, RunState
from jobs.paths import DataDir
from jobs.service import JobService
from jobs.store import RunStore

from tests.conftest import small_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = DataDir.at(tmp_path_factory.mktemp("raster") / "data")
    store = RunStore(data.db_path)
    service = JobService(store, data)
    run = service.submit_run(small_config(t_ms=100.0, epochs=1))
    train(Config.from_dict(run.config), data.run_dir(run.id))
    store.claim_next()
    store.transition(run.id, RunState.SUCCEEDED)
    yield service, run
    store.close()


def test_raster_spikes_lie_inside_the_trial_and_the_network(trained):
    service, run = trained
    raster = service.spike_raster(run.id, sample=3)
    assert raster["sample"] == 3 and 0 <= raster["label"] <= 9
    assert len(raster["e_times_ms"]) == len(raster["e_cells"]) > 0
    assert all(0 <= t < 100.0 for t in raster["e_times_ms"] + raster["i_times_ms"])
    assert all(0 <= c < 40 for c in raster["e_cells"]) and all(0 <= c < 10 for c in raster["i_cells"])
    assert len(raster["population_rate_hz"]) == 100  # 1 ms bins
    # the mean of the binned E rate is the E rate
    assert sum(raster["population_rate_hz"]) / 100 == pytest.approx(raster["rate_e_hz"])
    assert 5.0 <= raster["spectrum"]["peak_hz"] <= 250.0


def test_silencing_e_to_i_silences_i(trained):
    service, run = trained
    assert service.spike_raster(run.id, sample=0, ei_factor=0.0)["i_times_ms"] == []


def test_raster_refuses_bad_requests(trained):
    service, run = trained
    with pytest.raises(InvalidRequest) as error:
        service.spike_raster(run.id, sample=10**5)
    assert error.value.field == "sample"
    with pytest.raises(InvalidRequest) as error:
        service.spike_raster(run.id, ie_factor=-1.0)
    assert error.value.field == "ie_factor"
    queued = service.submit_run(small_config())
    with pytest.raises(Conflict):
        service.spike_raster(queued.id)
    analysis = service.store.create_run(RunKind.ANALYSIS, {"name": "coupling_sweep"}, source_run_id=run.id)
    with pytest.raises(Conflict):
        service.spike_raster(analysis.id)
