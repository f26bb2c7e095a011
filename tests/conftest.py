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


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared synthetic dataset small enough to train on in about a second per epoch."""
    from pipeline.data import generate_dataset, prepare_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root / "raw", n_images=16, size=64, seed=0)
    prepare_dataset(root / "raw", root / "prepared", img_size=64, val_fraction=0.25, test_fraction=0.25, seed=0)
    return root / "prepared"


@pytest.fixture
def tiny_params(tiny_prepared):
    """Factory: params for a 64x64 vit_tiny run on the tiny dataset with MLflow off, plus overrides."""
    from pipeline.params import load_params

    def make(*overrides: str):
        return load_params("missing.yaml", [
            "data.img_size=64", f"data.prepared_dir={tiny_prepared}", "train.epochs=2", "train.batch_size=4",
            "mlflow.enabled=false", *overrides,
        ])

    return make


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the session; ``postgres.new_database()`` gives a fresh,
    empty database's URL per call. Skips when no PostgreSQL server binaries are installed."""
    from pg_server import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer()
    except PostgresUnavailable as error:
        pytest.skip(str(error))
    with server:
        yield server


SLOW_REASON = "slow on 2 CPU cores (real MLflow server, full multi-family pipelines); set CRACKOPS_SLOW_TESTS=1 to run"


def pytest_collection_modifyitems(config, items):
    """`make test` runs the fast suite; CRACKOPS_SLOW_TESTS=1 (`make test-all`) adds the slow tests."""
    import os

    if os.environ.get("CRACKOPS_SLOW_TESTS"):
        return
    skip = pytest.mark.skip(reason=SLOW_REASON)
    for item in items:
        # Every test on the module-scoped real `mlflow server` shares its minutes-long setup.
        if item.get_closest_marker("slow") or "server" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
