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
def results_block():
    """``results_block(name)``: the text of docs/results.md between ``<!-- name:start -->`` and ``<!-- name:end -->``
    (the tables studies regenerate from their committed runs; the README links there)."""
    from pathlib import Path

    results = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()

    def block(name: str) -> str:
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        assert start in results and end in results, f"docs/results.md lost its generated {name} table markers"
        return results.split(start)[1].split(end)[0].strip()

    return block
