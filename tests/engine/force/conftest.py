import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The FORCE loops are thousands of small ops per simulated second: a second
    # intra-op thread only adds synchronisation (many times slower on a busy machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
