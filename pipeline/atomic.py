"""Atomic writes: a killed process never leaves a half-written file that a later run would trust.

Temporary names carry their writer's :func:`~pipeline.liveness.process_token`, so the next process
that writes into the same folder removes what a killed writer left (a killed ``prepare`` leaves
megabytes).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import storage_error
from pipeline.liveness import owner_is_dead, process_token

TMP_SUFFIX = ".tmp"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{process_token()}."


# Folders this process has cleaned: each is listed once, not once per file written into it.
_SWEPT: set[str] = set()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writer has died; returns what was removed.

    Writers still alive, on another host or in another PID namespace are left alone.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for candidate in folder.glob(f".*{TMP_SUFFIX}"):
        # .<output name>.<writer token>.<random>.tmp; the output's name may itself hold dots.
        parts = candidate.name[1:-len(TMP_SUFFIX)].rsplit(".", 2)
        if len(parts) != 3 or not owner_is_dead(parts[1]):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
        print(f"removed {candidate}: left by a killed run", file=sys.stderr, flush=True)
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temporaries` the first time this process writes into ``folder``.

    ``crackops predict`` writes thousands of masks into one folder; listing it for each would
    make the run quadratic. What a writer that dies later leaves is removed by the next process.
    """
    key = os.path.abspath(folder)
    if key not in _SWEPT:
        remove_stale_temporaries(folder)
        _SWEPT.add(key)


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A write that fails for want of space says which output it was: ``write()``'s OSError names
    no file, and torch and safetensors wrap it in their own errors."""
    try:
        yield
    except Exception as error:
        found = storage_error(error)
        if found is not None and found[1] is None and found[0] in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(found[0], os.strerror(found[0]), str(path)) from error
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _naming(path):
            yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        os.replace(old, path)  # killed between the two renames below: the previous version comes back
    tmp_path = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
    try:
        with _naming(path):
            yield tmp_path
        if path.exists():
            # Two renames keep the window without a valid folder as short as the filesystem allows.
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp_path, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
