"""The analysis tests run real models on a shared 2-core CPU."""
import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test. Where the cores are shared, OpenMP threads spin-wait
    for each other and a training step takes ten times longer with 2 threads than with
    1; the numbers measured do not matter here, only that the tools work."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
