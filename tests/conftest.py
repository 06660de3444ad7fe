"""Shared pytest fixtures. Area-specific helpers live in their own test modules."""

from __future__ import annotations

import os

import pytest
import torch

from slmkit.data.paths import datasets_dir

# Two cores here: keep each test process to a predictable thread count.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def datasets():
    """The shared datasets folder (../shared/datasets); tests read it in place."""
    path = datasets_dir()
    if not path.is_dir():
        pytest.fail(f"shared datasets not found at {path}; set SLMKIT_DATASETS")
    return path


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much when other work holds the cores.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
