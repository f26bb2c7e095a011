"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

# CrackForest sample, kept beside the repository (never inside it): ../shared/data/cfd.
CFD = Path(__file__).resolve().parents[2] / "shared/data/cfd"


@pytest.fixture
def cfd_root() -> Path:
    """The 100-pair CrackForest sample; skips the test when it is not there."""
    if not CFD.exists():
        pytest.skip("CrackForest sample not found at ../shared/data/cfd (it ships beside the repo in CI, not in a user's clone)")
    return CFD
