"""The what-if service's rules: the CPU cap, the threads it leaves training, newest-wins per session."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.config import ConfigError
from engine.whatif import Knobs
from jobs.models import InvalidRequest
from jobs.paths import DataDir
from jobs.service import JobService
from jobs.store import RunStore
from jobs.whatif import Latest, WhatIfService, knobs_of, slots_for
from tests.conftest import small_config


def test_slots_leave_the_training_slots_their_cores():
    assert slots_for(cores=2, workers=1, threads_per_run=1) == 1
    assert slots_for(cores=16, workers=2, threads_per_run=4) == 8
    assert slots_for(cores=2, workers=4, threads_per_run=2) == 1  # never none


def test_threads_shrink_while_training_runs(tmp_path):
    data = DataDir.at(tmp_path / "data")
    store = RunStore(data.db_path)
    service = WhatIfService(JobService(store, data), workers=1, threads_per_run=1, cores=2)
    assert service.slots == 1 and service.threads() == 2  # nothing trains: both cores
    service.jobs.submit_run(small_config())
    store.claim_next()  # one run running now
    assert service.threads() == 1
    store.close()


def test_bad_knobs_name_their_field():
    with pytest.raises(InvalidRequest) as error:
        knobs_of({"w_ie_scale": -0.5})
    assert error.value.field == "w_ie_scale"
    for bad in ({"n_images": 0}, {"sample": -1}, {"tau_gaba_ms": 0.0}, {"max_rate_hz": float("nan")},
                {"w_in_scale": True}):
        with pytest.raises(ConfigError) as error:
            Knobs(**bad)
        assert error.value.field == next(iter(bad))


def test_a_newer_request_supersedes_the_running_ones_result():
    computed, delivered = [], []
    release = threading.Event()

    def compute(value):
        computed.append(value)
        if value == 1:
            release.wait(5)  # request 1 is still running while 2, 3 and 4 arrive
        return value * 10

    async def scenario():
        latest = Latest(compute, lambda args, result: delivered.append((args, result)))
        first = asyncio.create_task(latest.request(1))
        while not computed:
            await asyncio.sleep(0.01)
        for value in (2, 3, 4):
            await latest.request(value)  # returns at once: one computation per session
        assert latest.running
        release.set()
        await first
        return latest

    latest = asyncio.run(scenario())
    assert computed == [1, 4]  # 2 and 3 never ran: no queue of stale frames
    assert delivered == [(4, 40)]  # 1 finished after 4 was asked for: dropped
    assert latest.superseded == 1 and not latest.running


def test_the_global_cap_holds_concurrent_sessions_to_its_slots(tmp_path, monkeypatch):
    data = DataDir.at(tmp_path / "data")
    store = RunStore(data.db_path)
    service = WhatIfService(JobService(store, data), workers=1, threads_per_run=1, cores=2)
    running, peak = [0], [0]

    def fake_what_if(*_args, **_kwargs):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        running[0] -= 1
        return "frame"

    monkeypatch.setattr("jobs.whatif.what_if", fake_what_if)
    monkeypatch.setattr(WhatIfService, "network", lambda self, run_id: (None, None, None))
    results = []
    threads = [threading.Thread(target=lambda: results.append(service.compute("run", Knobs()))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1 and results == ["frame"] * 4
    store.close()
