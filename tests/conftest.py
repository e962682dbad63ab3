import os

import pytest
import torch

# Two pytest-xdist workers share two cores: one thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    """Generated and built data go to a per-run temporary folder, never the user's cache."""
    monkeypatch.setenv("DEEPSETS_DATA", str(tmp_path_factory.getbasetemp() / "deepsets-data"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is much faster than contended threads on a small, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
