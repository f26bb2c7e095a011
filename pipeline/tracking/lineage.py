"""Lineage of a run: which code (git) and which data (DVC lock, prepare manifest) it used."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

from pipeline.data import load_manifest

# Where the pipeline runs outside any git repository, the package's own repository is asked.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _git_in(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _git(*args: str, cwd: Path | None = None) -> str | None:
    """Ask the repository of ``cwd`` (default: the working directory, whose params.yaml and
    dvc.lock DVC reproduces), else the one holding this package."""
    if cwd is not None:
        return _git_in(cwd, *args)
    folder = Path.cwd() if _git_in(Path.cwd(), "rev-parse", "--git-dir") is not None else PACKAGE_ROOT
    return _git_in(folder, *args)


def git_commit(cwd: Path | None = None) -> str | None:
    """The HEAD commit sha of the pipeline's repository; None outside git (or with no commit)."""
    return _git("rev-parse", "--verify", "HEAD", cwd=cwd) or None


# Written by DVC itself (`dvc exp run -S` edits params.yaml, every repro writes dvc.lock) or by the
# pipeline's stages (results/: the git-tracked metrics and plot data DVC compares); the run's
# params and outputs record what they say, so they do not make the code differ from its commit.
NOT_CODE = ("params.yaml", "dvc.lock", "results")


def git_dirty(cwd: Path | None = None) -> bool:
    """Whether tracked code differs from HEAD.

    Untracked files are ignored (runs create outputs, databases and caches that would otherwise
    mark every run dirty), and so are :data:`NOT_CODE`.
    """
    excluded = [f":(top,exclude){path}" for path in NOT_CODE]
    return bool(_git("status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded, cwd=cwd))


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _dvc_yaml(path: Path) -> dict:
    """A file DVC writes (``dvc.lock``, a ``.dvc`` file) as a mapping; empty when missing or unreadable:
    lineage is recorded where it can be, never a reason for a run to fail."""
    try:
        tree = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return tree if isinstance(tree, dict) else {}


def dvc_output_hash(path: str = "data/prepared", lock: Path = Path("dvc.lock")) -> str | None:
    """The md5 DVC recorded in ``lock`` for the stage output ``path``; None when absent.

    Note that the lock describes the last ``dvc repro``/``dvc commit``: data changed since then
    is caught by the manifest digest, not by this hash.
    """
    lock = Path(lock)
    stages = _dvc_yaml(lock).get("stages")
    if not isinstance(stages, dict):
        return None
    target = Path(path) if Path(path).is_absolute() else lock.parent / path
    for stage in stages.values():
        for out in (stage or {}).get("outs") or []:
            if isinstance(out, dict) and "path" in out and _same_path(lock.parent / str(out["path"]), target):
                md5 = out.get("md5")
                return str(md5) if md5 else None
    return None


def source_dvc_hash(source: str) -> str | None:
    """The md5 of a DVC-tracked dataset folder (``datasets/cfd`` with ``datasets/cfd.dvc`` beside it,
    written by ``dvc add``/``dvc import``); None for the synthetic source or an untracked folder."""
    outs = _dvc_yaml(Path(f"{str(source).rstrip('/')}.dvc")).get("outs")
    md5 = outs[0].get("md5") if isinstance(outs, list) and outs and isinstance(outs[0], dict) else None
    return str(md5) if md5 else None


def manifest_digest(prepared_dir: Path | str) -> str:
    """SHA-256 over the prepare manifest's ``files`` table (path -> file sha256): the data's identity.

    Independent of key order and of manifest fields that do not change the data.
    """
    files = load_manifest(Path(prepared_dir)).get("files", {})
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
