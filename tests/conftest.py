"""Shared test set-up: offline, single-threaded, and the optional reference data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A bug inside a command keeps its traceback in tests (the CLI prints one line without this).
os.environ.setdefault("TOKEN_ASSORTED_DEBUG", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> Path:
    """A file of the reference data beside the checkout; skip the test when it is absent."""
    path = SHARED / "data" / relative
    if not path.is_file():
        pytest.skip(f"reference data not available: {path}")
    return path


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> None:
    # Tests run on 2 shared cores; one intra-op thread keeps them predictable.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
