"""Shared test fixtures: the third-party sample data in ../shared/data (tests skip when it is absent)."""

import os
from pathlib import Path

import pytest
import torch

# One thread is usually faster than two on the shared 2-core CI machines (measured, see README).
torch.set_num_threads(1)

SHARED_DATA = Path(os.environ.get("LVD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real sample inputs; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return SHARED_DATA
