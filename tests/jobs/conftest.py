import pytest

from jobs.store import RunStore


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "spikeboard.db")
    yield store
    store.close()
