"""A full disk or a read-only folder: one line naming the file, exit status 2, the MLflow run FAILED.

The full disk is a small tmpfs mounted in a private mount namespace (``unshare --mount``, which
needs root or user namespaces); where that is refused, a file-size limit (RLIMIT_FSIZE) makes
the big write of training fails the same way with EFBIG instead of ENOSPC.
"""
from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from pipeline.errors import storage_problem

REPO = Path(__file__).resolve().parents[1]
# Mounts a tmpfs of $1 MiB (option string $2) on $3, then runs the rest in that namespace.
MOUNTED = 'mount -t tmpfs -o "size=$1m,$2" tmpfs "$3" && shift 3 && exec "$@"'


def _can_mount() -> bool:
    try:
        probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                               capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


CAN_MOUNT = _can_mount()


def crackops_on_small_disk(cwd: Path, disk: Path, megabytes: int, *args: str,
                           options: str = "rw") -> tuple[subprocess.CompletedProcess, str]:
    """Run ``crackops ARGS`` with ``disk`` a ``megabytes`` tmpfs; returns the result and the
    message expected for a full disk."""
    disk.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "crackops", *args]
    if CAN_MOUNT:
        result = subprocess.run(["unshare", "--mount", "sh", "-c", MOUNTED, "sh", str(megabytes), options,
                                 str(disk), *command], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=900)
        return result, "no space left on device"
    limit = megabytes * 2**20

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                            preexec_fn=limit_file_size)
    return result, "file size limit exceeded"


def prepare_project(root: Path, n_images: int, size: int) -> Path:
    """A synthetic dataset and a params.yaml preparing it into ``root/disk/prepared``; returns the disk."""
    from pipeline.data import generate_dataset

    generate_dataset(root / "raw", n_images=n_images, size=size, seed=0)
    disk = root / "disk"
    (root / "params.yaml").write_text(
        f"data:\n  source: {root / 'raw'}\n  prepared_dir: {disk / 'prepared'}\n  img_size: {size}\n")
    return disk


def test_disk_full_during_training_is_one_line_and_ends_the_run_failed(tmp_path: Path, tiny_prepared: Path) -> None:
    disk = tmp_path / "disk"
    (tmp_path / "params.yaml").write_text(
        f"data:\n  img_size: 64\n  prepared_dir: {tiny_prepared}\n"
        f"train:\n  epochs: 2\n  batch_size: 4\n  out_dir: {disk / 'train'}\n"
        f"mlflow:\n  tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}\n  experiment: full\n")
    # The resume state of the tiny model (~100 MB) cannot fit in 30 MB: the first epoch's save fails.
    result, expected = crackops_on_small_disk(tmp_path, disk, 30, "train", "--no-progress")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("crackops ")]
    assert lines == [f"crackops train: error: {expected}: {disk / 'train.partial' / 'last.pt'}; free space or "
                     "fix permissions and rerun (training resumes from its last whole epoch)"]
    assert "Traceback" not in result.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert run.info.status == "FAILED"
    assert "last.pt" in run.data.tags["crackops.end_reason"]


@pytest.mark.skipif(not CAN_MOUNT, reason="a file-size limit cannot fill a disk of small files: needs `unshare --mount`")
def test_disk_full_in_prepare_is_one_line(tmp_path: Path) -> None:
    disk = prepare_project(tmp_path, n_images=24, size=256)
    result, expected = crackops_on_small_disk(tmp_path, disk, 1, "prepare")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line == (f"crackops prepare: error: {expected}: {disk / 'prepared'}; free space or fix permissions "
                    "and rerun (finished outputs are untouched)")


@pytest.mark.skipif(not CAN_MOUNT, reason="mounting a read-only tmpfs needs `unshare --mount` (root)")
def test_read_only_output_folder_is_one_line(tmp_path: Path) -> None:
    disk = prepare_project(tmp_path, n_images=8, size=64)
    result, _ = crackops_on_small_disk(tmp_path, disk, 1, "prepare", options="ro")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"crackops prepare: error: read-only file system: {disk}")


def test_storage_problems_wrapped_by_libraries_are_recognised() -> None:
    def wrapped(outer: type[Exception], inner: BaseException) -> BaseException:
        """``outer`` raised while handling ``inner``, as MLflow's store re-raises SQLite's error."""
        try:
            try:
                raise inner
            except BaseException:
                raise outer("store failed")
        except BaseException as error:
            return error

    sqlite_full = wrapped(MlflowException, sqlite3.OperationalError("database or disk is full"))
    assert storage_problem(sqlite_full) == "no space left on device (SQLite: database or disk is full)"
    text_only = RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                             'message: "No space left on device" })')
    assert storage_problem(text_only) == "no space left on device"
    assert storage_problem(OSError(28, "No space left on device", "/x/y.png")) == "no space left on device: /x/y.png"
    assert storage_problem(FileNotFoundError(2, "No such file", "/x")) is None
    assert storage_problem(ValueError("bad value")) is None
