"""Fixtures shared by the engine's tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a whole module (equivalence tests compare per-thread sums)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
