"""Sweeps on the Ray Tune backend: two real trials on a local Ray with the Optuna backend's MLflow
structure and best-params files, a rerun that restores the finished experiment, and the pieces
that need no cluster."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pytest

pytest.importorskip("ray.tune", reason="ray[tune] is not installed")

from pipeline.params import load_params  # noqa: E402
from pipeline.tracking.mlflow_callback import MlflowCallback  # noqa: E402
from search.config import SweepConfig, SweepError  # noqa: E402
from search.mlflow_sweep import child_runs  # noqa: E402
from search.backends import run_sweep  # noqa: E402
from search.states import FAILED  # noqa: E402
from search import ray_backend  # noqa: E402
from search.ray_backend import STATE_FILE, absolute_uri, trial_base_tree  # noqa: E402
from search.results import BEST_OVERRIDES_FILE, BEST_PARAMS_FILE, SweepSummary  # noqa: E402
from search.space import load_space  # noqa: E402

# Scored by pixel AP (threshold-free): after two tiny epochs F1 at 0.5 is 0 for both trials, a tie
# that names no best.
TWO_EPOCHS = ("epochs: 2\nmetric: val_pixel_ap\nsampler: random\n"
              "parameters:\n  loss.lambda: {type: float, low: 0.3, high: 0.9}\n")


def _sweep(root: Path, prepared: Path) -> tuple[SweepSummary, str]:
    """Run the two-trial sweep in ``root``; returns its summary and what it printed."""
    (root / "two.yaml").write_text(TWO_EPOCHS)
    base = load_params("missing.yaml", [
        "data.img_size=64", f"data.prepared_dir={prepared}", "train.batch_size=4", "eval.n_overlays=0",
        "mlflow.tracking_uri=sqlite:///mlflow.db", "sweep.ray.cpus_per_trial=1", "sweep.ray.max_concurrent_trials=2",
    ])
    config = SweepConfig(load_space(str(root / "two.yaml")), base, n_trials=2, pruner="none")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            summary = run_sweep("ray", config)
    except SweepError as error:
        if "cannot start a local Ray" in str(error):
            pytest.skip(f"Ray cannot start here (no /dev/shm, no free ports, ...): {error}")
        raise
    return summary, printed.getvalue()


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Path) -> Iterator[tuple[Path, Any, str]]:
    """One real sweep for the module's tests (a local Ray costs seconds to start)."""
    root = tmp_path_factory.mktemp("ray_sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary, printed = _sweep(root, tiny_prepared)
        yield root, summary, printed
    mlflow.set_tracking_uri(None)


def test_two_trials_finish_with_the_optuna_backends_summary(ray_sweep) -> None:
    root, summary, printed = ray_sweep
    assert summary.counts["complete"] == 2 and sum(summary.counts.values()) == 2
    assert sorted(row.number for row in summary.rows) == [0, 1]
    assert all(row.epochs == 2 and row.value is not None for row in summary.rows)
    assert summary.best is not None and 0.3 <= summary.best.values["loss.lambda"] <= 0.9
    assert "sweep 'two' over space 'two' (ray)" in printed and "running on local Ray with" in printed
    assert "trial 0 complete val_pixel_ap" in printed and "trial 1 complete val_pixel_ap" in printed
    assert f"best params: loss.lambda={summary.best.values['loss.lambda']!r}" in printed
    assert (root / "sweeps/ray/two" / STATE_FILE).is_file()


def test_trials_are_nested_mlflow_runs_with_their_history(ray_sweep) -> None:
    root, summary, _ = ray_sweep
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.backend"] == "ray"
    assert parent.data.metrics["n_complete"] == 2
    assert parent.data.metrics["best_val_pixel_ap"] == pytest.approx(summary.best.value)
    assert {BEST_PARAMS_FILE, BEST_OVERRIDES_FILE} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    children = child_runs(summary.parent_run_id)
    assert sorted(child.info.run_name for child in children) == ["trial-0", "trial-1"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["trial.state"] == "complete"
        assert child.data.tags["sweep.backend"] == "ray" and child.data.tags["sweep.study"] == "two"
        assert child.info.run_name == f"trial-{child.data.tags['trial.number']}"
        assert "loss.lambda" in child.data.params and child.data.params["train.num_threads"] == "1"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/f1")] == [1, 2]


def test_best_params_files_are_written(ray_sweep) -> None:
    root, summary, _ = ray_sweep
    folder = root / "sweeps/two"
    assert (folder / BEST_PARAMS_FILE).read_text().split("\n", 2)[2].startswith("loss:\n  lambda:")
    assert (folder / BEST_OVERRIDES_FILE).read_text() == f"-S loss.lambda={summary.best.values['loss.lambda']!r}\n"
    assert summary.command == f"dvc exp run -S loss.lambda={summary.best.values['loss.lambda']!r}"


def test_a_finished_sweep_restores_and_reruns_nothing(ray_sweep, tiny_prepared: Path) -> None:
    root, summary, _ = ray_sweep
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        again, printed = _sweep(root, tiny_prepared)
    assert "resuming on local Ray" in printed and "trial 0 complete" not in printed  # no trial ran again
    assert again.counts == summary.counts and again.parent_run_id == summary.parent_run_id
    assert [(row.number, row.value) for row in again.rows] == [(row.number, row.value) for row in summary.rows]
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    assert len(child_runs(summary.parent_run_id)) == 2


def test_trials_get_absolute_paths_and_their_cpus_as_threads(tmp_path: Path, monkeypatch, tiny_params) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.yaml").write_text(TWO_EPOCHS)
    base = tiny_params("mlflow.tracking_uri=sqlite:///mlflow.db", "data.prepared_dir=data/prepared",
                       "sweep.ray.cpus_per_trial=2")
    tree = trial_base_tree(SweepConfig(load_space(str(tmp_path / "two.yaml")), base))
    assert tree["data"]["prepared_dir"] == str(tmp_path / "data/prepared")
    assert tree["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert tree["train"]["num_threads"] == 2


def test_absolute_tracking_uris(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_uri("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"
    assert absolute_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert absolute_uri("mlruns") == (tmp_path / "mlruns").as_uri()


def test_the_scheduler_compares_the_pruning_metric_and_the_searcher_the_metric(tiny_params, monkeypatch,
                                                                               tmp_path: Path) -> None:
    config = SweepConfig(load_space("sac-config3"), tiny_params(), pruner="asha", sampler="tpe")
    assert ray_backend.make_scheduler(config).metric == "val_pixel_ap"
    assert ray_backend.make_searcher(config, None).metric == "val_f1"
    # Tune rejects a result without the scheduler's metric: a failed trial's last result has both.
    reported: list[dict] = []
    monkeypatch.setattr(ray_backend.tune, "report", lambda result, checkpoint=None: reported.append(result))
    ray_backend.TuneTrialReporter(tmp_path, 4, [], MlflowCallback()).final(config.space, FAILED, None, "non-finite loss")
    assert {"val_f1", "val_pixel_ap"} <= set(reported[0]) and reported[0]["trial.state"] == FAILED
