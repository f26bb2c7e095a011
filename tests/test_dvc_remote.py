"""A DVC remote shares a finished pipeline: `dvc push` from one clone and `dvc pull` in a fresh clone
restore the tracked dataset and every stage's outputs, so `dvc repro` there has nothing to do.
A local folder stands in for the team's remote (S3, SSH, ... work the same way)."""
from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest

from pipeline.data import generate_dataset
from test_pipeline import BIN, TINY, make_project, merge, ran_stages, run

DVC = str(BIN / "dvc")
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
DATASET = "datasets/toy"

pytestmark = [
    pytest.mark.slow,  # one pipeline run: about a minute on 2 CPU cores
    pytest.mark.skipif(shutil.which("git") is None or not (BIN / "dvc").exists(), reason="needs git and dvc"),
]


def test_push_then_pull_in_a_fresh_clone_leaves_nothing_to_reproduce(tmp_path: Path) -> None:
    project = make_project(tmp_path, merge(TINY, {"data": {"source": DATASET}, "train": {"epochs": 1}}))
    generate_dataset(project / DATASET, n_images=16, size=64, seed=3)
    run([DVC, "add", "-q", DATASET], project)
    run([DVC, "repro"], project)
    _check_run_records_the_dataset_version(project)
    remote = tmp_path / "remote"
    run([DVC, "remote", "add", "-d", "shared", str(remote)], project)
    run([*GIT, "add", "-A"], project)  # the dataset's .dvc file, dvc.lock, results/, .dvc/config
    run([*GIT, "commit", "-qm", "baseline"], project)
    pushed = run([DVC, "push"], project)
    assert "pushed" in pushed.stdout, pushed.stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / DATASET).exists() and not (clone / "outputs").exists()
    run([DVC, "pull"], clone)

    comparison = filecmp.dircmp(project / DATASET, clone / DATASET)
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    for out in ("data/prepared/manifest.json", "outputs/train/model.safetensors", "outputs/eval/metrics.json",
                "outputs/eval/report.html", "outputs/register/registered.json"):
        assert filecmp.cmp(project / out, clone / out, shallow=False), out
    status = run([DVC, "status"], clone)
    assert "up to date" in status.stdout, status.stdout
    again = run([DVC, "repro"], clone)
    assert ran_stages(again.stdout) == [], again.stdout


def _check_run_records_the_dataset_version(project: Path) -> None:
    """The training run names the DVC version of the dataset: a run tag and its MLflow dataset's tag."""
    import yaml
    from mlflow import MlflowClient

    md5 = yaml.safe_load((project / f"{DATASET}.dvc").read_text())["outs"][0]["md5"]
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("crackops").experiment_id])
    assert run.data.tags["data.source_dvc_md5"] == md5
    (dataset_input,) = run.inputs.dataset_inputs
    assert {tag.key: tag.value for tag in dataset_input.tags}["dvc_md5"] == md5
