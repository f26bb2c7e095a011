"""Inputs by content hash in MLflow's artifact store, and a per-machine cache of them.

Why this store: a cluster sweep already needs an ``mlflow server`` every node reaches (runs,
metrics, models). Started with proxied artifacts (``--serve-artifacts``, MLflow's default, with
``--artifacts-destination`` on S3, GCS, a shared folder, ...), the server also moves files over the
same HTTP address, so nodes need no storage credentials and no shared mount. The driver uploads
each input once under ``mlflow-artifacts:/crackops-inputs/<sha256>/`` and a node downloads it once
into its cache; nothing else (NFS, object-store keys on every node, Ray's object store, which
holds objects only while the driver lives and caps their size) is needed.

Layout under the store's root (``<root>/<sha256>/``): ``content/`` (the folder's files, or the one
file under its own name) and ``input.json``, written last: an input without it is an upload that
did not finish, uploaded again. Keys: a file's key is the sha256 of its bytes (what ``sha256sum``
prints); a folder's is the sha256 of its sorted ``relative/path<TAB>file sha256`` lines.

The cache (``$CRACKOPS_CACHE_DIR/inputs/<sha256>/``, default ``~/.cache/crackops/inputs/``)
holds each version once per machine: a download goes to a temporary folder beside it, is checked
against its key, then renamed into place (atomic), under a file lock so that trials starting
together on one node download it once. A cached folder is trusted by its name: nothing writes
into it after the rename.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.errors import CrackopsError

SERVER_ROOT = "mlflow-artifacts:/crackops-inputs"  # the proxied artifact store of an ``mlflow server``
CONTENT = "content"
MARKER = "input.json"
CACHE_ENV = "CRACKOPS_CACHE_DIR"
_DIR_HEADER = b"crackops-folder-v1\n"
_CHUNK = 1 << 20


@contextmanager
def _quiet() -> Iterator[None]:
    """No MLflow progress bar per input: a trial's log would show one line per file."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


class InputStoreError(CrackopsError):
    """An input cannot be published to or fetched from the artifact store."""


@dataclass(frozen=True)
class StoredInput:
    """An input in the store: its key, whether it is a folder or one file, and that file's name."""

    sha256: str
    kind: str  # "dir" | "file"
    name: str  # the file's name ("file"), the folder's name ("dir"; informative only)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(path: str | Path) -> str:
    """The key of a file (sha256 of its bytes) or of a folder (of its files' paths and sha256s)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise InputStoreError(f"input not found: {path}")
    digest = hashlib.sha256(_DIR_HEADER)
    files = sorted((item.relative_to(path).as_posix(), item) for item in path.rglob("*") if item.is_file())
    for relative, item in files:
        digest.update(f"{relative}\t{file_sha256(item)}\n".encode())
    return digest.hexdigest()


def cache_root() -> Path:
    """This machine's input cache: ``$CRACKOPS_CACHE_DIR/inputs``, else ``~/.cache/crackops/inputs``."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base).expanduser() / "inputs"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "crackops" / "inputs"


class InputStore:
    """Content-addressed inputs under ``root`` (any MLflow artifact URI; an ``mlflow server``'s by
    default), resolved with ``tracking_uri`` (which server ``mlflow-artifacts:`` means)."""

    def __init__(self, tracking_uri: str | None, root: str = SERVER_ROOT, cache: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.root = root.rstrip("/")
        self.cache = cache or cache_root()

    def _repo(self, sha256: str):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(f"{self.root}/{sha256}", tracking_uri=self.tracking_uri)

    # --- the driver's side

    def exists(self, sha256: str) -> bool:
        try:
            return any(Path(item.path).name == MARKER for item in self._repo(sha256).list_artifacts())
        except Exception:  # noqa: BLE001 - a missing prefix is an error on some stores: not there
            return False

    def publish(self, path: str | Path) -> tuple[StoredInput, bool]:
        """Upload ``path`` (a file or folder) unless the store holds its content already.

        Returns the stored input and whether it was uploaded now.
        """
        with _quiet():
            return self._publish(Path(path))

    def _publish(self, path: Path) -> tuple[StoredInput, bool]:
        sha256 = content_sha256(path)
        stored = StoredInput(sha256, "file" if path.is_file() else "dir", path.name)
        if self.exists(sha256):
            return stored, False
        try:
            repo = self._repo(sha256)
            if stored.kind == "file":
                repo.log_artifact(str(path), CONTENT)
            else:
                repo.log_artifacts(str(path), CONTENT)
            with tempfile.TemporaryDirectory(prefix="crackops-input-") as folder:
                marker = Path(folder) / MARKER
                marker.write_text(json.dumps({"sha256": sha256, "kind": stored.kind, "name": stored.name}))
                repo.log_artifact(str(marker))  # last: its presence means the upload is complete
        except Exception as error:  # noqa: BLE001 - say which input and where, whatever the store raised
            raise InputStoreError(f"cannot upload {path} to {self.root}/{sha256} (tracking {self.tracking_uri}): "
                                  f"{type(error).__name__}: {error}; an `mlflow server` must serve artifacts "
                                  "(--serve-artifacts, the default, with --artifacts-destination)") from None
        return stored, True

    # --- a node's side

    def cached(self, stored: StoredInput) -> Path:
        """Where ``stored`` lies in this machine's cache (a folder, or the file inside its folder)."""
        folder = self.cache / stored.sha256
        return folder / stored.name if stored.kind == "file" else folder

    def fetch(self, stored: StoredInput) -> Path:
        """The cached copy of ``stored``, downloaded first if this machine has none."""
        folder = self.cache / stored.sha256
        if folder.is_dir():
            return self.cached(stored)
        from filelock import FileLock

        self.cache.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.cache / f".{stored.sha256}.lock")):
            if folder.is_dir():  # another trial on this machine fetched it while we waited
                return self.cached(stored)
            tmp = Path(tempfile.mkdtemp(prefix=f".{stored.sha256}.", suffix=".tmp", dir=self.cache))
            try:
                self._download(stored.sha256, tmp)
                content = tmp / CONTENT
                got = content_sha256(content / stored.name if stored.kind == "file" else content)
                if got != stored.sha256:
                    raise InputStoreError(f"input {stored.sha256} from {self.root} has content {got}: "
                                          "the store's copy is damaged; delete it there and rerun the sweep")
                os.rename(content, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return self.cached(stored)

    def _download(self, sha256: str, destination: Path) -> None:
        try:
            with _quiet():
                self._repo(sha256).download_artifacts(CONTENT, str(destination))
        except Exception as error:  # noqa: BLE001 - say which input and where
            raise InputStoreError(f"cannot download input {sha256} from {self.root} (tracking "
                                  f"{self.tracking_uri}): {type(error).__name__}: {error}") from None
