import time

import pytest

from jobs.store import RunStore


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "spikeboard.db")
    yield store
    store.close()


def tick_until(scheduler, predicate, timeout_s: float) -> None:
    """Tick the scheduler until `predicate()` holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        scheduler.tick()
        time.sleep(0.1)
