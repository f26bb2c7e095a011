"""`dvc repro` end to end on tiny data: stages, caching, reruns, MLflow run and registration."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {
    "data": {"img_size": 64, "synthetic": {"n_images": 16, "size": 64, "zero_shot_images": 6}},
    "train": {"epochs": 2, "batch_size": 4},
    "eval": {"blur_kernels": [1, 9], "n_overlays": 2, "n_thresholds": 19},
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_project(root: Path, extra: dict) -> Path:
    """A copy of the project's pipeline (code, dvc.yaml, params) in its own git + DVC repo."""
    project = root / "project"
    project.mkdir()
    for name in ("pipeline", "registry", "search", "datasets"):  # datasets/: prepare's dependency
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, project / name)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), merge(TINY, extra))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], project)
    run([str(BIN / "dvc"), "init", "-q"], project)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], project)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], project)
    return project


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_dvc_repro_end_to_end_on_synthetic_data(tmp_path):
    project = make_project(tmp_path, {})
    first = run([str(BIN / "dvc"), "repro"], project)
    assert ran_stages(first.stdout) == ["prepare", "embed", "distill", "train", "evaluate", "register"]

    registered = json.loads((project / "outputs/register/registered.json").read_text())
    assert registered["alias"] == "candidate" and registered["version"] == "1"
    metrics = json.loads((project / "outputs/eval/metrics.json").read_text())
    assert {"test", "low_light_blur", "blur_down_up", "blur_sweep", "zero_shot"} <= set(metrics)
    assert (project / "mlflow.db").is_file()

    # MLflow: the run holds params, curves and the evaluation; the version holds evidence and alias.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version_by_alias("crack-segmenter", "candidate")
    run_data = client.get_run(version.run_id).data
    assert run_data.params["train.epochs"] == "2"
    assert len(client.get_metric_history(version.run_id, "val/f1")) == 2
    assert "test_f1" in run_data.metrics and "zero_shot_mean_iou" in run_data.metrics
    assert version.tags["eval.test.f1"] == str(metrics["test"]["f1"])
    assert version.tags["git.commit"] == run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert "data.dvc_md5" in version.tags

    second = run([str(BIN / "dvc"), "repro"], project)
    assert ran_stages(second.stdout) == []

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = 1e-4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run([str(BIN / "dvc"), "repro"], project)
    assert ran_stages(third.stdout) == ["train", "evaluate", "register"]
    assert json.loads((project / "outputs/register/registered.json").read_text())["version"] == "2"
    # Forced again on the same run, register reuses that run's version instead of adding a third.
    forced = run([str(BIN / "dvc"), "repro", "--force", "--single-item", "register"], project)
    assert ran_stages(forced.stdout) == ["register"]
    assert json.loads((project / "outputs/register/registered.json").read_text())["version"] == "2"
    versions = client.search_model_versions("name='crack-segmenter'", order_by=["version_number"])
    assert [version.version for version in versions] == [1, 2]

    # `dvc metrics show`: the headline file only, from this run's train and evaluate outputs.
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout)
    headline = shown[""]["data"]["results/metrics.json"]["data"]
    train = json.loads((project / "outputs/train/metrics.json").read_text())
    metrics = json.loads((project / "outputs/eval/metrics.json").read_text())
    assert set(shown[""]["data"]) == {"results/metrics.json"}
    assert headline["val"]["f1"] == round(train["val"]["f1"], 5) and headline["test"]["f1"] == metrics["test"]["f1"]
    assert headline["zero_shot"]["mean"]["iou"] == metrics["zero_shot"]["mean"]["iou"]


def test_dvc_repro_on_crackforest(tmp_path, cfd_root):
    project = make_project(tmp_path, {"data": {"source": str(cfd_root)}, "eval": {"zero_shot": []}})
    result = run([str(BIN / "dvc"), "repro"], project)
    assert ran_stages(result.stdout) == ["prepare", "embed", "distill", "train", "evaluate", "register"]
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert sum(manifest["counts"].values()) == 100
    metrics = json.loads((project / "outputs/eval/metrics.json").read_text())
    assert 0.0 <= metrics["test"]["f1"] <= 1.0 and "zero_shot" not in metrics or metrics["zero_shot"] == {}
