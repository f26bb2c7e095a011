"""Ray Tune sweeps on a cluster: two Ray nodes on 127.0.0.1, the second one in a mount namespace
where the project (code, data, outputs) is hidden, so its trials see only what Ray's runtime_env
and the MLflow server bring; and the pieces that need no cluster (tracking URI refusal, address
probe, storage URIs, the content-hash input cache)."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pytest

pytest.importorskip("ray.tune", reason="ray[tune] is not installed")

from pipeline.params import load_params  # noqa: E402
from pipeline.tracking.input_store import InputStore, content_sha256  # noqa: E402
from registry.local_server import free_port, running_mlflow_server  # noqa: E402
from search import ray_backend, ray_cluster  # noqa: E402
from search.config import SweepConfig, SweepError  # noqa: E402
from search.backends import run_sweep  # noqa: E402
from search.trial import TAG_STATE  # noqa: E402
from search.states import COMPLETE  # noqa: E402
from search.ray_cluster import StorageURI, TAG_NODE, check_cluster_tracking, probe_address  # noqa: E402
from search.space import load_space  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = "epochs: 1\nsampler: random\nparameters:\n  loss.lambda: {type: float, low: 0.3, high: 0.9}\n"
NODE_UP_S = 240  # generous: only a bound for a node that never comes up, not a timing assumption


# --- the pieces that need no cluster ----------------------------------------------------------------


def _config(tmp_path: Path, *overrides: str, address: str | None = "10.0.0.1:6379") -> SweepConfig:
    (tmp_path / "one.yaml").write_text(ONE_EPOCH)
    return SweepConfig(load_space(str(tmp_path / "one.yaml")), load_params("missing.yaml", list(overrides)),
                       address=address)


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "file:///srv/mlruns", "mlruns", "postgresql://db/mlflow"])
def test_a_cluster_sweep_refuses_a_tracking_store_that_is_not_a_server(tmp_path: Path, monkeypatch, uri) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SweepError) as caught:
        check_cluster_tracking(_config(tmp_path, f"mlflow.tracking_uri={uri}"))
    message = str(caught.value)
    assert uri in message and "--address 10.0.0.1:6379" in message
    assert "mlflow server --backend-store-uri postgresql://" in message and "--serve-artifacts" in message
    assert "-S mlflow.tracking_uri=http://" in message


def test_the_default_store_is_refused_on_a_cluster_and_kept_on_a_local_ray(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SweepError, match="sqlite:///mlflow.db"):
        check_cluster_tracking(_config(tmp_path))
    check_cluster_tracking(_config(tmp_path, address=None))  # local Ray: sqlite is fine
    check_cluster_tracking(_config(tmp_path, "mlflow.tracking_uri=http://mlflow:5000"))
    with pytest.raises(SweepError, match="mlflow.enabled"):
        check_cluster_tracking(_config(tmp_path, "mlflow.enabled=false"))


def test_an_unreachable_address_is_one_error_naming_it_before_ray_starts(tmp_path: Path, monkeypatch) -> None:
    port = free_port()  # nothing listens there now: the connection is refused at once
    monkeypatch.setattr(ray_backend.ray, "init", lambda *a, **k: pytest.fail("ray.init must not be reached"))
    config = _config(tmp_path, "mlflow.tracking_uri=http://127.0.0.1:1", address=f"127.0.0.1:{port}")
    with pytest.raises(SweepError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        with ray_backend.ray_session(config):
            pass
    assert ray_cluster.PROBE_TIMEOUT_S <= 30


def test_the_address_probe_passes_a_listening_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        probe_address(f"127.0.0.1:{listener.getsockname()[1]}")
    probe_address("auto")  # Ray looks that up on this machine itself


def test_storage_path_takes_uris_and_folders(tmp_path: Path) -> None:
    folder = ray_backend.experiment_dir(_config(tmp_path, f"sweep.ray.storage_path={tmp_path}/ray"))
    assert folder == tmp_path / "ray/one"
    uri = ray_backend.experiment_dir(_config(tmp_path, f"sweep.ray.storage_path={tmp_path.as_uri()}/ray"))
    assert isinstance(uri, StorageURI) and str(uri) == f"{tmp_path.as_uri()}/ray/one"
    assert str(uri.parent) == f"{tmp_path.as_uri()}/ray" and uri.name == "one"
    # What the driver does with the folder: the state file written, found and read back.
    state = uri / ray_backend.STATE_FILE
    assert not state.is_file() and ray_backend.read_state(uri) == {}
    uri.mkdir(parents=True, exist_ok=True)
    ray_cluster.write_json_to(state, {"space": "one"})
    assert state.is_file() and ray_backend.read_state(uri) == {"space": "one"}
    assert (tmp_path / "ray/one" / ray_backend.STATE_FILE).is_file()
    # s3:// and the like are handed to pyarrow; an unknown scheme is a clear error.
    with pytest.raises(SweepError, match="sweep.ray.storage_path 'nosuch://x/y'"):
        ray_backend.experiment_dir(_config(tmp_path, "sweep.ray.storage_path=nosuch://x/y"))


def test_tune_restores_an_experiment_under_a_uri(tmp_path: Path) -> None:
    """``Tuner.can_restore`` and ``ExperimentAnalysis`` take the URI ``experiment_dir`` gives."""
    from ray import tune

    folder = StorageURI(f"{tmp_path.as_uri()}/ray") / "exp"
    assert not tune.Tuner.can_restore(str(folder))
    (tmp_path / "ray/exp").mkdir(parents=True)
    (tmp_path / "ray/exp/tuner.pkl").write_bytes(b"")
    assert tune.Tuner.can_restore(str(folder))


def test_a_lost_node_retries_its_trial(tmp_path: Path, tiny_params, monkeypatch) -> None:
    made: list[Any] = []
    # A real Tuner would start a local Ray in this process; the run config is what matters.
    class Tuner:
        can_restore = staticmethod(lambda path: False)

        def __new__(cls, trainable, **kwargs):
            made.append(kwargs)
            return "tuner"

    monkeypatch.setattr(ray_backend.tune, "Tuner", Tuner)
    config = SweepConfig(load_space(str(_write(tmp_path / "one.yaml", ONE_EPOCH))), tiny_params())
    assert ray_backend._tuner(config, tmp_path / "ray/one", None, None, 2, None) == ("tuner", False)
    failure = made[0]["run_config"].failure_config
    assert failure.max_failures == config.base.sweep.ray.max_failures >= 1 and not failure.fail_fast


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_inputs_are_uploaded_once_and_downloaded_once_per_machine(tmp_path: Path, tiny_prepared: Path,
                                                                  monkeypatch) -> None:
    root = (tmp_path / "store").as_uri()  # any artifact URI works; clusters use the server's proxied store
    driver = InputStore(None, root=root, cache=tmp_path / "driver-cache")
    stored, uploaded = driver.publish(tiny_prepared)
    assert uploaded and stored.kind == "dir" and stored.sha256 == content_sha256(tiny_prepared)
    assert driver.publish(tiny_prepared) == (stored, False)  # same content: no second upload
    checkpoint = _write(tmp_path / "student.safetensors", "weights")
    file_input, _ = driver.publish(checkpoint)
    assert file_input.sha256 == content_sha256(checkpoint) and file_input.name == "student.safetensors"

    node = InputStore(None, root=root, cache=tmp_path / "node-cache")
    downloads: list[str] = []
    original = InputStore._download
    monkeypatch.setattr(InputStore, "_download", lambda self, sha, dst: (downloads.append(sha), original(self, sha, dst)))
    first = node.fetch(stored)
    assert first == tmp_path / "node-cache" / stored.sha256 and content_sha256(first) == stored.sha256
    assert node.fetch(stored) == first and downloads == [stored.sha256]  # the second fetch is the cached copy
    got = node.fetch(file_input)
    assert got.read_text() == "weights" and got.name == "student.safetensors"
    assert downloads == [stored.sha256, file_input.sha256]
    assert not [p for p in (tmp_path / "node-cache").iterdir() if p.name.endswith(".tmp")]  # no half downloads


def test_a_damaged_store_copy_is_not_cached(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = InputStore(None, root=root.as_uri(), cache=tmp_path / "cache")
    stored, _ = store.publish(_write(tmp_path / "ckpt.pt", "good"))
    (root / stored.sha256 / "content/ckpt.pt").write_text("evil")
    with pytest.raises(Exception, match="damaged"):
        store.fetch(stored)
    assert not (tmp_path / "cache" / stored.sha256).exists()


def test_trials_get_the_cached_copies_in_their_params(tmp_path: Path, tiny_prepared: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRACKOPS_CACHE_DIR", str(tmp_path / "cache"))
    root = (tmp_path / "store").as_uri()
    monkeypatch.setattr(ray_cluster, "InputStore", lambda uri: InputStore(uri, root=root))
    stored, _ = InputStore(None, root=root).publish(tiny_prepared)
    shipment = ray_cluster.Shipment((ray_cluster.ShippedInput("data.prepared_dir", stored),))
    tree = {"data": {"prepared_dir": "/driver/only/data/prepared"}}
    assert ray_cluster.localize(tree, shipment)["data"]["prepared_dir"] == str(tmp_path / "cache/inputs" / stored.sha256)
    assert tree["data"]["prepared_dir"] == "/driver/only/data/prepared"


def test_a_node_with_other_code_or_versions_is_refused() -> None:
    good = ray_cluster.Shipment(code_sha256=ray_cluster.code_sha256(), versions=ray_cluster.versions())
    ray_cluster.verify_node(good)
    with pytest.raises(SweepError, match="other crackops code"):
        ray_cluster.verify_node(ray_cluster.Shipment(code_sha256="0" * 64))
    with pytest.raises(SweepError, match=r"torch \S+ \(driver 0\.0\.1\)"):
        ray_cluster.verify_node(ray_cluster.Shipment(versions={**ray_cluster.versions(), "torch": "0.0.1"}))


# --- two Ray nodes ------------------------------------------------------------------------------------

# Runs inside `unshare --mount`: hides $HIDE (colon-separated folders) under empty tmpfs mounts,
# keeps the virtual environment at its path, writes what it sees to $REPORT, then runs the node.
HIDE_SCRIPT = r"""
set -eu
inside=0
IFS=:
for folder in $HIDE; do case "$VENV/" in "$folder"/*) inside=1 ;; esac; done
[ "$inside" = 1 ] && mount --bind "$VENV" "$STAGE"
for folder in $HIDE; do mount -t tmpfs -o size=1m crackops-hidden "$folder"; done
if [ "$inside" = 1 ]; then mkdir -p "$VENV"; mount --move "$STAGE" "$VENV"; fi
cd "$WORKDIR"
{
  for path in $CHECK; do
    if ls "$path" >/dev/null 2>&1; then echo "visible $path"; else echo "hidden $path"; fi
  done
  unset IFS
  if "$VENV/bin/python" -c "import pipeline" >/dev/null 2>&1; then echo "import pipeline ok"; else echo "import pipeline failed"; fi
  if "$VENV/bin/python" -c "import ray" >/dev/null 2>&1; then echo "import ray ok"; else echo "import ray failed"; fi
} > "$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
exec "$@"
"""


def _ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _port_range(size: int) -> tuple[int, int]:
    """``size`` consecutive ports free now (Ray's worker ports)."""
    for start in range(20000 + (os.getpid() * 37) % 20000, 60000, size):
        try:
            for port in range(start, start + size):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start, start + size - 1
    raise RuntimeError("no free port range")


def _node_command(temp_dir: Path, head_port: int, head: bool) -> list[str]:
    node_manager, object_manager, runtime_env_agent, agent_listen, agent_grpc, metrics = _ports(6)
    low, high = _port_range(16)
    command = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
               "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", str(temp_dir), "--disable-usage-stats",
               "--object-store-memory", str(100 * 1024 * 1024),
               "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
               "--min-worker-port", str(low), "--max-worker-port", str(high),
               "--runtime-env-agent-port", str(runtime_env_agent), "--dashboard-agent-listen-port", str(agent_listen),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics)]
    if head:
        # No --ray-client-server-port: Ray Client (ray[client]) is not installed, so nothing listens.
        return command + ["--head", "--port", str(head_port), "--include-dashboard=false"]
    return command + ["--address", f"127.0.0.1:{head_port}"]


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Ray's GCS, raylet, agents, workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """End a node this test started, by PID: SIGTERM to the processes below its `ray start --block`
    (GCS, raylet, agents, workers: what `ray stop` would signal, but only ours), then SIGKILL to
    that command and to anything still running."""
    pids = _descendants(proc.pid)
    for pid in pids[1:]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(pid) for pid in pids[1:]):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if pid == proc.pid or _running(pid):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _unshare_problem() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs crackops-probe /mnt"],
                           capture_output=True, text=True)
    if probe.returncode:
        return f"mount namespaces or tmpfs mounts are not permitted here: {probe.stderr.strip()}"
    return None


def _alive_nodes(address: str) -> dict[str, Any]:
    from ray._raylet import GcsClient

    infos = GcsClient(address=address).get_all_node_info(timeout=10)
    return {node_id.hex(): info for node_id, info in infos.items() if info.state == 0}  # 0: ALIVE


@dataclass
class Cluster:
    address: str
    head_id: str
    worker_id: str
    worker_report: str
    root: Path  # visible to both nodes: Ray's folders, Tune's storage, the nodes' caches
    hidden: list[Path]
    procs: list[subprocess.Popen] = field(default_factory=list)


def _wait_for(what: str, check, procs: list[subprocess.Popen], logs: list[Path]) -> Any:
    deadline = time.monotonic() + NODE_UP_S
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: {proc.args[:3]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {NODE_UP_S} s:\n" + "\n".join(log.read_text()[-2000:] for log in logs))


def _editable_source() -> Path | None:
    """Where the installed (editable) crackops finds its packages without this test's PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], cwd="/",
                          env=env, capture_output=True, text=True)
    return Path(done.stdout.strip()).resolve().parents[1] if done.returncode == 0 else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Path) -> Iterator[Cluster]:
    problem = _unshare_problem()
    if problem:
        pytest.skip(problem)
    root = Path(tempfile.mkdtemp(prefix="crackops-rc-", dir="/tmp"))  # short: Ray's socket paths
    basetemp = tmp_path_factory.getbasetemp().resolve()
    editable = _editable_source()  # the installed package's folder: hidden too, or it would serve the code
    hidden = [REPO, basetemp, *([editable] if editable not in (None, REPO) else [])]
    for name in ("head", "worker", "worker-cwd", "stage", "cache-head", "cache-worker", "storage"):
        (root / name).mkdir()
    head_port = free_port()
    address = f"127.0.0.1:{head_port}"
    restore_auth = _token_auth()
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 would refuse the second node (it defaults to 1 on Linux).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "CRACKOPS_CACHE_DIR": str(root / "cache-head")}
    procs: list[subprocess.Popen] = []
    logs = [root / "head.log", root / "worker.log"]
    try:
        with logs[0].open("w") as out:
            procs.append(subprocess.Popen(_node_command(root / "head", head_port, head=True), stdout=out,
                                          stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True))
        head = _wait_for("head node", lambda: _alive_nodes(address) if _port_open(head_port) else None, procs, logs)
        checks = [REPO / "pipeline", tiny_prepared, *(folder / "pipeline" for folder in hidden[2:])]
        worker_env = {key: value for key, value in env.items() if key != "PYTHONPATH"}
        worker_env.update({
            "CRACKOPS_CACHE_DIR": str(root / "cache-worker"), "HIDE": ":".join(map(str, hidden)),
            "VENV": str(Path(sys.prefix)), "STAGE": str(root / "stage"), "WORKDIR": str(root / "worker-cwd"),
            "REPORT": str(root / "worker-report.txt"), "CHECK": ":".join(map(str, checks)),
        })
        script = root / "hide.sh"
        script.write_text(HIDE_SCRIPT)
        with logs[1].open("w") as out:
            procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", str(script),
                                           *_node_command(root / "worker", head_port, head=False)],
                                          stdout=out, stderr=subprocess.STDOUT, env=worker_env, cwd=root,
                                          start_new_session=True))
        nodes = _wait_for("second node", lambda: (lambda n: n if len(n) == 2 else None)(_alive_nodes(address)),
                          procs, logs)
        head_id = next(iter(head))
        worker_id = next(node for node in nodes if node != head_id)
        yield Cluster(address, head_id, worker_id, (root / "worker-report.txt").read_text(), root, hidden, procs)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        restore_auth()
        shutil.rmtree(root, ignore_errors=True)


def _token_auth():
    """Token authentication, as Ray >= 2.52 uses by default, for the nodes and this process (the
    driver and the node checks); returns what restores this process's mode."""
    from ray._private.authentication import authentication_token_setup as auth
    from ray._raylet import Config

    previous = os.environ.get(auth.AUTH_MODE_ENV_VAR)
    os.environ[auth.AUTH_MODE_ENV_VAR] = "token"
    Config.initialize("")
    auth.ensure_token_if_auth_enabled()  # ~/.ray/auth_token, created if missing

    def restore() -> None:
        if previous is None:
            os.environ.pop(auth.AUTH_MODE_ENV_VAR, None)
        else:
            os.environ[auth.AUTH_MODE_ENV_VAR] = previous
        Config.initialize("")

    return restore


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An ``mlflow server`` with proxied artifacts (its store in this test's hidden temp folder)."""
    with running_mlflow_server(tmp_path_factory.mktemp("tracking")) as url:
        yield url


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised sam_lite student at 64 px, saved as `crackops distill` saves one."""
    import torch
    from safetensors.torch import save_file

    from pipeline.models.sam_lite.model import STRIDE_KEY, build_student

    torch.manual_seed(0)
    params = load_params("missing.yaml", ["data.img_size=64", "model.family=sam_lite"])
    model = build_student(params)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    save_file({name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}, str(path),
              metadata={STRIDE_KEY: str(model.stride)})
    return path


def _cluster_sweep(cluster: Cluster, tracking: str, folder: Path, prepared: Path, study: str,
                   *overrides: str) -> tuple[Any, str]:
    (folder / "one.yaml").write_text(ONE_EPOCH)
    base = load_params("missing.yaml", [
        "data.img_size=64", f"data.prepared_dir={prepared}", "train.batch_size=4", "eval.n_overlays=0",
        "tuning.method=decoder", f"mlflow.tracking_uri={tracking}", "sweep.ray.cpus_per_trial=1",
        "sweep.ray.max_concurrent_trials=2", f"sweep.ray.storage_path={(cluster.root / 'storage').as_uri()}",
        *overrides,
    ])
    config = SweepConfig(load_space(str(folder / "one.yaml")), base, n_trials=2, pruner="none", study=study,
                         address=cluster.address, out_root=folder / "sweeps")
    import ray

    if ray.is_initialized():
        ray.shutdown()  # this process's own connection (left by another test): the sweep must connect to --address
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the driver's folder, hidden from the second node
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with contextlib.redirect_stdout(printed):
            summary = run_sweep("ray", config)
    return summary, printed.getvalue()


def _trial_runs(tracking: str, parent_run_id: str) -> list[Any]:
    client = mlflow.MlflowClient(tracking)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def test_the_second_node_sees_neither_the_project_nor_its_data(cluster: Cluster, tiny_prepared: Path) -> None:
    report = cluster.worker_report
    assert f"hidden {REPO / 'pipeline'}" in report and f"hidden {tiny_prepared}" in report
    assert "visible" not in report, report
    assert "import pipeline failed" in report and "import ray ok" in report, report


@pytest.mark.parametrize("family", ["sam", "sam_lite"])
def test_a_cluster_sweep_runs_trials_on_both_nodes(cluster: Cluster, tracking: str, tiny_prepared: Path,
                                                    student: Path, tmp_path: Path, family: str) -> None:
    overrides = [f"model.family={family}", f"model.student_checkpoint={student}"]
    if family == "sam":
        overrides += ["model.variant=vit_tiny"]
    summary, printed = _cluster_sweep(cluster, tracking, tmp_path, tiny_prepared, f"cluster-{family}", *overrides)
    assert summary.counts["complete"] == 2 and sum(summary.counts.values()) == 2, printed
    assert f"running on Ray cluster at {cluster.address}" in printed
    assert "input data.prepared_dir: " in printed
    runs = _trial_runs(tracking, summary.parent_run_id)
    assert sorted(run.info.run_name for run in runs) == ["trial-0", "trial-1"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == COMPLETE
        assert run.data.params["model.family"] == family and "val/f1" in run.data.metrics
        assert [m.step for m in mlflow.MlflowClient(tracking).get_metric_history(run.info.run_id, "val/f1")] == [1]
    assert {run.data.tags[TAG_NODE] for run in runs} == {cluster.head_id, cluster.worker_id}
    # Each node fetched the data (and sam_lite's student) by content hash into its own cache.
    data_key = content_sha256(tiny_prepared)
    for cache in ("cache-head", "cache-worker"):
        assert (cluster.root / cache / "inputs" / data_key / "manifest.json").is_file()
        if family == "sam_lite":
            assert (cluster.root / cache / "inputs" / content_sha256(student) / student.name).is_file()

    if family == "sam":
        # Rerun: Tune restores the finished experiment from the file:// storage URI, runs nothing again,
        # and the driver finds its inputs on the server already.
        again, printed = _cluster_sweep(cluster, tracking, tmp_path, tiny_prepared, "cluster-sam", *overrides)
        assert f"resuming on Ray cluster at {cluster.address}" in printed and "trial 0 complete" not in printed
        assert "input data.prepared_dir: already on the server" in printed
        assert again.parent_run_id == summary.parent_run_id and again.counts == summary.counts
        assert len(_trial_runs(tracking, summary.parent_run_id)) == 2


def test_trials_get_an_absolute_student_checkpoint(tmp_path: Path, monkeypatch, tiny_params) -> None:
    monkeypatch.chdir(tmp_path)
    config = SweepConfig(load_space(str(_write(tmp_path / "one.yaml", ONE_EPOCH))),
                         tiny_params("model.family=sam_lite", "model.student_checkpoint=outputs/distill/s.safetensors"))
    tree = ray_backend.trial_base_tree(config)
    assert tree["model"]["student_checkpoint"] == str(tmp_path / "outputs/distill/s.safetensors")
