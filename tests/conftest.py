"""Shared fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: several times faster on the 2-core (often shared) CI machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def readme_block():
    """``readme_block(name)``: the README text between ``<!-- name:start -->`` and ``<!-- name:end -->``
    (the tables studies regenerate from their committed runs)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    def block(name: str) -> str:
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        assert start in readme and end in readme, f"README lost its generated {name} table markers"
        return readme.split(start)[1].split(end)[0].strip()

    return block
