import pytest

from jobs.store import RunStore


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "spikeboard.db")
    yield store
    store.close()


def small_config(**overrides):
    """A config that trains an epoch in about two seconds on one CPU thread."""
    fields = dict(arch="ping", n_e=40, n_i=10, t_ms=20.0, epochs=2, batch_size=200, tier="smoke")
    fields.update(overrides)
    return fields
