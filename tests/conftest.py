"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is fastest and immune to oversubscription on shared CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
