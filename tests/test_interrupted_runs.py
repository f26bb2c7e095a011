"""SIGKILL at chosen moments of ``crackops train`` and ``crackops prepare``: what the rerun finds.

Each kill happens in a child process (a SIGKILL runs no cleanup, unlike an exception); the child
patches one function to kill itself at the named moment, then runs the real command line.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]
KILLER = """
import os, signal, sys
from crackops import cli

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

moment = sys.argv[1]
if moment.startswith("after_epoch_"):  # once that epoch is saved, before MLflow has all of it
    from pipeline.training.callbacks import PrintCallback
    last = int(moment.rsplit("_", 1)[1])
    printed = PrintCallback.on_epoch_end
    def print_then_die(self, result, control):
        printed(self, result, control)
        if result.epoch + 1 == last:
            die()
    PrintCallback.on_epoch_end = print_then_die
elif moment == "while_logging_outputs":  # every epoch trained, the model not yet logged
    from pipeline.tracking import tracked_training
    tracked_training._log_outputs = die
elif moment == "while_writing_prepared":  # some PNGs of the new dataset written
    from pipeline.data import prepare
    encode, written = prepare._encode_png, []
    def encode_then_die(array):
        written.append(1)
        if len(written) == 6:
            die()
        return encode(array)
    prepare._encode_png = encode_then_die
elif moment != "none":
    raise SystemExit(f"unknown moment {moment}")
sys.exit(cli.main(sys.argv[2:]))
"""


def crackops(project: Path, moment: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", KILLER, moment, *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture
def project(tmp_path: Path, tiny_prepared: Path) -> Path:
    (tmp_path / "params.yaml").write_text(
        "data:\n  img_size: 64\n  prepared_dir: " + str(tiny_prepared) + "\n"
        "train:\n  epochs: 3\n  batch_size: 4\n  out_dir: train\n"
        "eval:\n  n_overlays: 0\n"
        "mlflow:\n  tracking_uri: sqlite:///" + str(tmp_path / "mlflow.db") + "\n  experiment: kills\n")
    return tmp_path


def train(project: Path, moment: str = "none", *overrides: str) -> subprocess.CompletedProcess:
    return crackops(project, moment, "train", "--no-progress", *[f"-S{item}" for item in overrides])


def epochs_trained(result: subprocess.CompletedProcess) -> list[int]:
    """The epochs whose line (PrintCallback's ``epoch N: ...``) the command printed."""
    return [int(line.split(":")[0].split()[1]) for line in result.stdout.splitlines() if line.startswith("epoch ")]


def runs(project: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kills")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def steps(project: Path, run_id: str) -> list[int]:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    return sorted(metric.step for metric in client.get_metric_history(run_id, "train/loss"))


def test_killed_training_continues_its_mlflow_run_with_the_whole_curve(project: Path) -> None:
    killed = train(project, "after_epoch_2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run,) = runs(project)
    assert run.info.status == "RUNNING"  # nothing can end it at a SIGKILL: the rerun must

    rerun = train(project)
    assert rerun.returncode == 0, rerun.stderr
    assert f"continuing MLflow run {run.info.run_id}" in rerun.stdout
    assert "resuming from" in rerun.stdout and epochs_trained(rerun) == [3]
    (continued,) = runs(project)  # the same run, not a second one
    assert continued.info.run_id == run.info.run_id and continued.info.status == "FINISHED"
    # Epoch 2 was saved but died before MLflow got it: the rerun logs it from the resume state.
    assert steps(project, run.info.run_id) == [1, 2, 3]
    assert json.loads((project / "train" / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    assert not (project / "train.partial").exists()


def test_kill_after_the_last_epoch_keeps_the_trained_weights(project: Path) -> None:
    killed = train(project, "while_logging_outputs")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert epochs_trained(killed) == [1, 2, 3]
    assert (project / "train.partial" / "last.pt").is_file()  # kept until MLflow has the model

    rerun = train(project)
    assert rerun.returncode == 0, rerun.stderr
    assert "had finished; reusing it" in rerun.stdout
    assert epochs_trained(rerun) == []  # no epoch retrained
    (run,) = runs(project)
    assert run.info.status == "FINISHED" and steps(project, run.info.run_id) == [1, 2, 3]
    assert (project / "train" / "model.safetensors").is_file()
    assert len(json.loads((project / "train" / "metrics.json").read_text())["val"]) > 0


def test_killed_run_that_is_not_resumed_ends_killed(project: Path) -> None:
    killed = train(project, "after_epoch_1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (orphan,) = runs(project)

    # Other params: the resume state is dropped and a new run starts; the orphan must not stay RUNNING.
    other = train(project, "none", "train.lr=1e-4")
    assert other.returncode == 0, other.stderr
    assert f"ended KILLED 1 run(s) left RUNNING by killed trainings: {orphan.info.run_id}" in other.stdout
    by_id = {run.info.run_id: run for run in runs(project)}
    assert len(by_id) == 2
    assert by_id[orphan.info.run_id].info.status == "KILLED"
    assert "killed" in by_id[orphan.info.run_id].data.tags["crackops.end_reason"]
    (new,) = [run for run_id, run in by_id.items() if run_id != orphan.info.run_id]
    assert new.info.status == "FINISHED" and steps(project, new.info.run_id) == [1, 2, 3]


def test_killed_prepare_leaves_no_temporary_folder_after_the_rerun(tmp_path: Path) -> None:
    from pipeline.data import generate_dataset

    generate_dataset(tmp_path / "raw", n_images=12, size=64, seed=0)
    (tmp_path / "params.yaml").write_text(f"data:\n  source: {tmp_path / 'raw'}\n  prepared_dir: prepared\n"
                                          "  img_size: 64\n")
    killed = crackops(tmp_path, "while_writing_prepared", "prepare")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = list(tmp_path.glob(".prepared.*.tmp"))
    assert len(leftovers) == 1 and any(leftovers[0].rglob("*.png"))
    assert not (tmp_path / "prepared").exists()

    rerun = crackops(tmp_path, "none", "prepare")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{leftovers[0].name}: left by a killed run" in rerun.stderr
    assert not list(tmp_path.glob(".prepared.*")) and (tmp_path / "prepared" / "manifest.json").is_file()


def test_a_folder_is_cleaned_of_dead_writers_temporaries_once_per_process(tmp_path: Path) -> None:
    """Every output's leftovers go at the first write into the folder; the folder is not listed again
    for each later file (predict writes thousands of masks into one)."""
    from pipeline import atomic
    from pipeline.liveness import _host_key

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{_host_key()}-{finished.stdout.strip()}-1"
    left = [tmp_path / f".a_mask.png.{dead}.x1y2{atomic.TMP_SUFFIX}", tmp_path / f".b.tar.gz.{dead}.z3{atomic.TMP_SUFFIX}"]
    alive = tmp_path / f".c.png.{atomic.process_token()}.q9{atomic.TMP_SUFFIX}"
    for path in (*left, alive):
        path.write_text("half")
    atomic.write_text(tmp_path / "c_mask.png", "whole")
    assert not any(path.exists() for path in left) and alive.exists()
    later = tmp_path / f".d.png.{dead}.w8{atomic.TMP_SUFFIX}"
    later.write_text("half")
    atomic.write_text(tmp_path / "d.png", "whole")
    assert later.exists()  # swept once per process: the next process removes it
    assert atomic.remove_stale_temporaries(tmp_path) == [later] and not later.exists()
