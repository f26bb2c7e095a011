"""Errors that the command line reports as one clear message instead of a traceback."""
from __future__ import annotations

import errno


class CrackopsError(Exception):
    """Base class: the CLI prints ``str(error)`` and exits with status 2."""


class ParamsError(CrackopsError):
    """A parameter file or ``-S`` override is invalid; the message names the key."""


class DatasetError(CrackopsError):
    """A dataset folder is unusable; the message lists every file at fault."""


class CheckpointError(CrackopsError):
    """A model checkpoint is missing or does not fit the architecture."""


# What the operating system refused, as the one line a user needs; any other OSError stays a traceback.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# The same refusals as libraries wrap them (SQLite, safetensors, torch): only the text survives.
_STORAGE_TEXTS = {
    "no space left on device": errno.ENOSPC,
    "database or disk is full": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
}


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def storage_error(error: BaseException) -> tuple[int, str | None] | None:
    """``(errno, file)`` when ``error`` (or what it wraps) is the system refusing a write or a read
    for lack of space or permission; None for anything else."""
    chain = _chain(error)
    for item in chain:
        if isinstance(item, OSError) and item.errno in _STORAGE_ERRNOS:
            return item.errno, item.filename or next(
                (other.filename for other in chain if isinstance(other, OSError) and other.filename), None)
    for item in chain:
        text = str(item).lower()
        for needle, number in _STORAGE_TEXTS.items():
            if needle in text:
                return number, None
    return None


def storage_problem(error: BaseException) -> str | None:
    """``"no space left on device: /data/x.png"`` for a :func:`storage_error`, else None."""
    found = storage_error(error)
    if found is None:
        return None
    number, where = found
    if where:
        return f"{_STORAGE_ERRNOS[number]}: {where}"
    sqlite = any("database or disk is full" in str(item).lower() for item in _chain(error))
    return _STORAGE_ERRNOS[number] + (" (SQLite: database or disk is full)" if sqlite else "")
