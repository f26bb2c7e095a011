"""What a Ray Tune sweep needs to run on a cluster (``--address``), beside :mod:`search.ray_backend`.

A trial may run on a machine without the driver's folder, so it depends on nothing of it:

* code: the packages ``pipeline``, ``search`` and ``registry`` travel in Ray's ``runtime_env``
  (``py_modules``, uploaded to the cluster once per version), so every worker imports the driver's
  code. A digest of that code and the versions of Python, torch, MLflow and Ray go with every trial;
  a worker that imports other code or runs other versions fails with an error naming both;
* inputs: the prepared data (``data.prepared_dir``) and the checkpoints a trial loads
  (``model.checkpoint``, ``model.student_checkpoint`` for ``sam_lite``) go by content hash through
  the MLflow server's artifact store (see :mod:`pipeline.tracking.input_store` for why there): the
  driver uploads each version once, each node downloads it once into its cache, and the trial's
  params point at the cached copies;
* results: MLflow must be a tracking server every node reaches; a ``sqlite:`` or file store would
  be a new empty database on every node, so it is refused with the command to run instead;
* lineage: the git commit and DVC hash are the driver's (a node's folder is not the project);
* working directory: a trial runs in its own scratch folder on its node;
* Tune's experiment folder (``sweep.ray.storage_path``): a folder every node mounts, or a URI
  pyarrow understands (``s3://``, ``gs://``, ``hdfs://``, ``file://``); :class:`StorageURI` gives
  the driver the path operations it uses on that folder;
* lost nodes: Tune retries a trial whose worker or node died (``sweep.ray.max_failures``) from its
  last checkpoint in the experiment folder.

Local Ray (no ``--address``) ships the code the same way but uses the inputs in place.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import socket
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from pipeline.params import Params, set_values
from pipeline.tracking.input_store import InputStore, StoredInput
from pipeline.tracking.lineage import dvc_output_hash, git_commit, git_dirty
from pipeline.tracking.setup import resolve_tracking_uri
from search.config import SweepConfig, SweepError

PACKAGES = ("pipeline", "search", "registry")
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".json")
RUNTIME_EXCLUDES = ["__pycache__", "*.pyc", "*.egg-info"]
VERSIONED = ("torch", "mlflow", "ray")
PROBE_TIMEOUT_S = 10.0
TAG_NODE = "ray.node_id"  # on every trial's MLflow run: the Ray node it ran on
CLUSTER_TRACKING_SCHEMES = ("http", "https")
SERVER_HINT = ("start an MLflow server that every node reaches, e.g. `mlflow server --backend-store-uri "
               "postgresql://USER:PASSWORD@DBHOST/mlflow --serve-artifacts --artifacts-destination "
               "s3://BUCKET/mlartifacts --host 0.0.0.0 --port 5000`, and pass "
               "`-S mlflow.tracking_uri=http://MLFLOW_HOST:5000`")


# --- before Ray starts ----------------------------------------------------------------------------


def check_cluster_tracking(config: SweepConfig) -> None:
    """With ``--address``, MLflow must be a tracking server (runs and inputs go through it)."""
    if not config.address:
        return
    params = config.base.mlflow
    if not params.enabled:
        raise SweepError(f"a cluster sweep (--address {config.address}) sends its data and checkpoints to the nodes "
                         f"through the MLflow server: keep mlflow.enabled true; {SERVER_HINT}")
    uri = resolve_tracking_uri(params)
    scheme = urlparse(uri).scheme.lower()
    if scheme not in CLUSTER_TRACKING_SCHEMES:
        what = ("a file on this machine: every node would write to a new empty database of its own"
                if scheme in ("", "file", "sqlite") else "not an MLflow server: nodes cannot fetch inputs through it")
        raise SweepError(f"a cluster sweep (--address {config.address}) needs an MLflow tracking server, but the "
                         f"tracking URI is {uri!r}, {what}; {SERVER_HINT}")


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds, naming ``address``, when its GCS port does not answer.

    ``ray.init`` itself retries an unreachable cluster for minutes.
    """
    host, port = _host_port(address)
    if host is None:
        return  # "auto" and the like: Ray finds the address on this machine itself
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        reason = "no answer" if isinstance(error, socket.timeout) else (error.strerror or str(error))
        raise SweepError(f"cannot reach the Ray cluster at {address} ({host}:{port}: {reason} within "
                         f"{timeout:g} s): start it with `ray start --head --port {port}` there, or check "
                         "--address and the firewall") from None


def _host_port(address: str) -> tuple[str | None, int]:
    text = address.strip()
    client = text.startswith("ray://")
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if text in ("", "auto", "local"):
        return None, 0
    parsed = urlparse(f"//{text}")
    try:
        port = parsed.port
    except ValueError:
        raise SweepError(f"--address {address!r} is not host:port") from None
    if parsed.hostname is None:
        raise SweepError(f"--address {address!r} is not host:port")
    return parsed.hostname, port or (10001 if client else 6379)


# --- code ------------------------------------------------------------------------------------------


def package_dirs() -> list[Path]:
    """The folders of the project's packages, as this process imports them."""
    import importlib

    return [Path(importlib.import_module(name).__file__).resolve().parent for name in PACKAGES]


def code_sha256(dirs: list[Path] | None = None) -> str:
    """A digest of the packages' source files (what ``py_modules`` ships), by relative path."""
    digest = hashlib.sha256()
    for folder in dirs or package_dirs():
        files = sorted(path for path in folder.rglob("*")
                       if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts)
        for path in files:
            digest.update(f"{folder.name}/{path.relative_to(folder).as_posix()}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Python and the packages whose version changes what a trial computes (local builds ignored)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name).split("+", 1)[0]
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def runtime_env() -> dict[str, Any]:
    """Ray's ``runtime_env`` for the sweep: the project's code to every worker, trials in place."""
    return {
        "py_modules": [str(folder) for folder in package_dirs()],
        "excludes": list(RUNTIME_EXCLUDES),
        # Tune must not move trials into its own folders; crackops_trial picks a scratch folder.
        "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"},
    }


# --- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedInput:
    """One param (``data.prepared_dir``, ...) whose file or folder travels by content hash."""

    key: str
    stored: StoredInput


@dataclass(frozen=True)
class Shipment:
    """What the driver gives every trial besides its params: the inputs to fetch, the code and
    versions it must run, and the driver's lineage tags."""

    inputs: tuple[ShippedInput, ...] = ()
    tracking_uri: str | None = None
    code_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)


def shipped_keys(params: Params) -> list[tuple[str, str | None, bool]]:
    """``(key, path, required)`` of the inputs a trial of ``params`` loads."""
    family = params.model.family
    keys = [("data.prepared_dir", params.data.prepared_dir, True)]
    if params.model.checkpoint:
        keys.append(("model.checkpoint", params.model.checkpoint, True))
    if params.model.student_checkpoint:
        keys.append(("model.student_checkpoint", params.model.student_checkpoint, family == "sam_lite"))
    return keys


def prepare_shipment(config: SweepConfig) -> Shipment:
    """On the driver, before the tuner starts: publish the inputs (cluster only) and stamp the code.

    A missing required input is an error here rather than in every trial.
    """
    params = config.base
    uri = resolve_tracking_uri(params.mlflow)
    inputs: list[ShippedInput] = []
    if config.address:
        store = InputStore(uri)
        for key, path, required in shipped_keys(params):
            if not Path(path).exists():
                if required:
                    raise SweepError(f"{key} {path} not found: a cluster sweep uploads it to the MLflow server "
                                     "for the nodes, so it must exist on the driver")
                continue  # e.g. the default student path with another model family: no trial loads it
            stored, uploaded = store.publish(Path(path).resolve())
            print(f"input {key}: {'uploaded' if uploaded else 'already on the server'} as {stored.sha256[:12]}",
                  flush=True)
            inputs.append(ShippedInput(key, stored))
    return Shipment(tuple(inputs), uri, code_sha256(), versions(), driver_lineage(params))


def driver_lineage(params: Params) -> dict[str, str]:
    """The code and data lineage tags as the driver sees them (a node's folder is not the project)."""
    tags: dict[str, str] = {}
    commit = git_commit()
    if commit:
        tags.update({"git.commit": commit, "git.dirty": str(git_dirty()).lower(), "mlflow.source.git.commit": commit})
    dvc_md5 = dvc_output_hash(params.data.prepared_dir)
    if dvc_md5:
        tags["data.dvc_md5"] = dvc_md5
    return tags


# --- in the trial ------------------------------------------------------------------------------------


def verify_node(shipment: Shipment) -> None:
    """The code and versions this worker runs must be the driver's."""
    node = _node_name()
    if shipment.code_sha256:
        here = code_sha256()
        if here != shipment.code_sha256:
            where = ", ".join(str(folder) for folder in package_dirs())
            raise SweepError(f"node {node} runs other crackops code ({where}, digest {here[:12]}) than the driver "
                             f"(digest {shipment.code_sha256[:12]}): Ray's runtime_env did not take effect there")
    mine = versions()
    wrong = {name: (want, mine.get(name)) for name, want in shipment.versions.items() if mine.get(name) != want}
    if wrong:
        listed = ", ".join(f"{name} {have} (driver {want})" for name, (want, have) in sorted(wrong.items()))
        raise SweepError(f"node {node} runs other versions than the driver: {listed}; install the driver's "
                         "versions there (same constraints.txt)")


def localize(base_tree: dict[str, Any], shipment: Shipment) -> dict[str, Any]:
    """``base_tree`` with each shipped input's param pointing at this machine's cached copy."""
    if not shipment.inputs:
        return base_tree
    store = InputStore(shipment.tracking_uri)
    values = {item.key: str(store.fetch(item.stored)) for item in shipment.inputs}
    return set_values(base_tree, values)  # a copy


def node_id() -> str:
    """The Ray node this process runs on ('' outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            # get_runtime_context() would start or join a Ray (RAY_ADDRESS, a dead cluster's
            # address left by an earlier session) and can wait on it forever.
            return ""
        return ray.get_runtime_context().get_node_id() or ""
    except Exception:  # noqa: BLE001 - not in Ray
        return ""


def _node_name() -> str:
    return f"{socket.gethostname()} ({node_id()[:12] or 'no Ray node'})"


# --- Tune's experiment folder -----------------------------------------------------------------------


class StorageURI:
    """A folder on a pyarrow filesystem (``s3://bucket/sweeps/ray/study``) with the few path
    operations the driver uses on Tune's experiment folder: ``/``, ``parent``, ``name``,
    ``exists``, ``is_file``, ``read_text``, ``write_text``, ``mkdir`` and ``str`` (the URI, which
    ``RunConfig(storage_path=...)``, ``Tuner.can_restore``/``restore`` and ``ExperimentAnalysis``
    take as they are)."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        scheme, rest = uri.split("://", 1)
        self.scheme = scheme
        self.uri = uri.rstrip("/") if rest.strip("/") else uri
        try:
            self.fs, self.path = pyarrow.fs.FileSystem.from_uri(self.uri)
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for unknown schemes
            raise SweepError(f"sweep.ray.storage_path {uri!r} is not a URI pyarrow can open "
                             f"({type(error).__name__}: {error}); use a folder every node mounts, "
                             "or s3://, gs://, hdfs://, file://") from None

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"StorageURI({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorageURI) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str) -> "StorageURI":
        return StorageURI(f"{self.uri.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def parent(self) -> "StorageURI":
        head, _, _ = self.uri.rstrip("/").rpartition("/")
        return StorageURI(head if "://" in head and head.split("://", 1)[1] else self.uri)

    def _info(self):
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        import pyarrow.fs

        return self._info().type != pyarrow.fs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs

        return self._info().type == pyarrow.fs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs

        return self._info().type == pyarrow.fs.FileType.Directory

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if self.exists() and not exist_ok:
            raise FileExistsError(self.uri)
        self.fs.create_dir(self.path, recursive=parents)

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read().decode()

    def write_text(self, text: str) -> None:
        """Written beside, then moved: a reader never sees half a file where moves are atomic (local,
        HDFS); on object stores (S3, GCS) a single upload is atomic by itself."""
        tmp = f"{self.path}.tmp"
        with self.fs.open_output_stream(tmp) as stream:
            stream.write(text.encode())
        self.fs.move(tmp, self.path)


def storage_folder(storage: str, study: str) -> Path | StorageURI:
    """Tune's experiment folder of ``study`` under ``sweep.ray.storage_path`` (a folder or a URI)."""
    if "://" in storage:
        return StorageURI(storage) / study
    return Path(storage).resolve() / study


def write_json_to(path: Path | StorageURI, data: Any) -> None:
    """Write ``data`` as indented JSON to a local path (atomically) or a :class:`StorageURI`."""
    if isinstance(path, StorageURI):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        return
    from pipeline.atomic import write_json

    write_json(path, data)
