import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    # The FORCE loops are thousands of small ops per simulated second: a second
    # intra-op thread only adds synchronisation (many times slower on a busy machine).
    yield
