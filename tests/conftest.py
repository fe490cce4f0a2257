import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # Two cores on CI: one intra-op pool avoids oversubscription across processes.
    torch.set_num_threads(2)


def tiny_config(**overrides):
    """A network small enough to train an epoch in about a second (smoke tier)."""
    from engine import Config

    fields = dict(n_e=100, n_i=25, t_ms=50.0, epochs=2, batch_size=100, lr=1e-2, tier="smoke")
    fields.update(overrides)
    return Config(**fields)


def small_config(**overrides):
    """Config fields (JSON) of a run that trains an epoch in about two seconds on one thread."""
    fields = dict(arch="ping", n_e=40, n_i=10, t_ms=20.0, epochs=2, batch_size=200, tier="smoke")
    fields.update(overrides)
    return fields
