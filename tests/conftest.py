"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Intra-op threads spin-wait; on a shared 2-core CPU one thread is many times faster for small
    tensors. Restored afterwards so other test modules are unaffected. Use it per module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
