"""A new version of a tracked dataset reruns `prepare`: DVC sees the datasets' content, not only
the name in `data.source`. Real `git` and `dvc` on a copy of the project's pipeline definition."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data import generate_dataset
from pipeline.tracking.lineage import source_dvc_hash

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")


def _run(cwd: Path, *command: str) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    if not DVC.is_file() or shutil.which("git") is None:
        pytest.skip("needs git and the venv's dvc")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("pipeline", "registry", "datasets"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, str(DVC), "init", "-q")
    for out in ("data/prepared", "data/zero_shot"):  # stands in for a finished `prepare`
        (tmp_path / out).mkdir(parents=True)
        (tmp_path / out / "manifest.json").write_text("{}")
    _run(tmp_path, str(DVC), "commit", "-f", "-q", "prepare")
    return tmp_path


def _prepare_changed(project: Path) -> str | None:
    """What `dvc status prepare` says changed, or None when it is up to date."""
    status = _run(project, str(DVC), "status", "prepare")
    return None if "up to date" in status else status


def test_adding_or_editing_a_tracked_dataset_reruns_prepare(project: Path) -> None:
    assert _prepare_changed(project) is None
    generate_dataset(project / "datasets/toy", n_images=3, size=32, seed=0)
    _run(project, str(DVC), "add", "-q", "datasets/toy")
    assert "datasets" in (_prepare_changed(project) or "")  # a new dataset: prepare reruns
    first = source_dvc_hash(str(project / "datasets/toy"))
    assert first is not None and first.endswith(".dir")
    _run(project, str(DVC), "commit", "-f", "-q", "prepare")
    assert _prepare_changed(project) is None
    removed = sorted((project / "datasets/toy/images").iterdir())[0]
    removed.unlink()
    (project / "datasets/toy/masks" / removed.name).unlink(missing_ok=True)
    _run(project, str(DVC), "add", "-q", "datasets/toy")  # the case: one pair removed, added again
    assert "datasets" in (_prepare_changed(project) or "")
    assert source_dvc_hash(str(project / "datasets/toy")) not in (None, first)  # the run's lineage sees the new version
