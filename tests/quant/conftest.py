"""Shared set-up of the quantization-core tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    # tests draw from the global RNG: make them independent of what ran before
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    # These tests run many small ops; on a shared 2-core machine OpenMP barriers make each
    # multi-threaded small op cost ~10-30 ms. Results do not depend on the thread count.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
