"""MLflow tracking: a tiny tracked training into a throwaway sqlite store, and its pieces."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Iterator

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.data import generate_dataset, prepare_dataset
from pipeline.params import MlflowParams, Params, load_params
from pipeline.tracking.lineage import dvc_output_hash, git_commit, git_dirty, manifest_digest
from pipeline.tracking.setup import DEFAULT_TRACKING_URI, configure, resolve_tracking_uri
from pipeline.tracking.tracked_training import RUN_FILE, flatten_metrics, log_evaluation, train_with_tracking
from pipeline.training.callbacks import Callback, EpochResult, TrainerControl
from pipeline.training.run import Selection, TrainOutcome

DVC_MD5 = "0123456789abcdef0123456789abcdef.dir"


def _params(root: Path, *overrides: str) -> Params:
    return load_params(root / "missing.yaml", [
        "data.img_size=64", "train.epochs=2", "train.batch_size=4", "eval.n_overlays=2",
        f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db", f"data.prepared_dir={root}/data/prepared",
        f"train.out_dir={root}/outputs/train", *overrides,
    ])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project folder with 12 prepared 64 px images and a dvc.lock naming them; the cwd."""
    root = tmp_path_factory.mktemp("tracking")
    generate_dataset(root / "source", n_images=12, size=64, seed=0)
    prepare_dataset(root / "source", root / "data/prepared", img_size=64, val_fraction=0.25, test_fraction=0.15, seed=0)
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: crackops prepare\n    outs:\n"
        f"    - path: data/prepared\n      hash: md5\n      md5: {DVC_MD5}\n      size: 1\n      nfiles: 1\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def tracked(workspace: Path) -> tuple[TrainOutcome, str, Params]:
    params = _params(workspace)
    outcome, run_id = train_with_tracking(params, Path(params.train.out_dir), progress=False, run_name="tiny",
                                          tags={"purpose": "test"})
    assert run_id is not None
    return outcome, run_id, params


def _client_for(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(uri)


def _client(workspace: Path) -> mlflow.MlflowClient:
    return _client_for(f"sqlite:///{workspace}/mlflow.db")


def _png_base64(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


# --- setup and lineage ---------------------------------------------------------------------

def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(MlflowParams()) == DEFAULT_TRACKING_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri(MlflowParams()) == "http://tracking:5000"
    assert resolve_tracking_uri(MlflowParams(tracking_uri="sqlite:///x.db")) == "sqlite:///x.db"


def test_configure_keeps_artifacts_local(workspace: Path) -> None:
    experiment_id = configure(MlflowParams(tracking_uri=f"sqlite:///{workspace}/mlflow.db", experiment="setup-test"))
    assert configure(MlflowParams(tracking_uri=f"sqlite:///{workspace}/mlflow.db", experiment="setup-test")) == experiment_id
    experiment = _client(workspace).get_experiment(experiment_id)
    assert experiment.artifact_location == (workspace / "mlartifacts").as_uri()


def test_git_lineage_outside_git(tmp_path: Path) -> None:
    assert git_commit(cwd=tmp_path) is None
    assert git_dirty(cwd=tmp_path) is False


def test_artifacts_live_beside_the_sqlite_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    try:
        elsewhere = configure(MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/store/m.db", experiment="e"))
        assert _client_for(f"sqlite:///{tmp_path}/store/m.db").get_experiment(elsewhere).artifact_location == \
            (tmp_path / "store/mlartifacts").as_uri()
        here = configure(MlflowParams(tracking_uri="sqlite:///m.db", experiment="e"))
        assert _client_for("sqlite:///m.db").get_experiment(here).artifact_location == \
            (tmp_path / "cwd/mlartifacts").as_uri()
    finally:
        mlflow.set_tracking_uri(None)


def test_dvc_output_hash(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    assert dvc_output_hash("data/prepared", lock) is None
    lock.write_text("schema: '2.0'\nstages:\n  prepare:\n    outs:\n    - path: data/prepared/\n      md5: abc.dir\n")
    assert dvc_output_hash("data/prepared", lock) == "abc.dir"
    assert dvc_output_hash(str(tmp_path / "data/prepared"), lock) == "abc.dir"
    assert dvc_output_hash("data/other", lock) is None


def test_manifest_digest_ignores_key_order(tmp_path: Path) -> None:
    for name, files in (("a", {"x.png": "1", "y.png": "2"}), ("b", {"y.png": "2", "x.png": "1"}), ("c", {"x.png": "3"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"splits": {}, "files": files, "seed": name}))
    assert manifest_digest(tmp_path / "a") == manifest_digest(tmp_path / "b") != manifest_digest(tmp_path / "c")


def test_flatten_metrics_names() -> None:
    flat = flatten_metrics({
        "test": {"f1": 0.5, "iou": 0.25, "f1_image_mean": 0.45, "ods": 0.6, "ods_threshold": 0.4, "per_image": [1, 2]},
        "low_light_blur": {"iou": 0.2, "note": "text"},
        "zero_shot": {"mean": {"f1": 0.3}, "std": {"f1": 0.01}, "synthetic-masonry": {"f1": 0.3}},
        "flag": True, "epochs": 3,
    })
    assert flat == {"test_f1": 0.5, "test_iou": 0.25, "test_f1_image_mean": 0.45, "test_ods": 0.6, "test_ods_threshold": 0.4,
                    "low_light_blur_iou": 0.2, "zero_shot_mean_f1": 0.3, "zero_shot_std_f1": 0.01,
                    "zero_shot_synthetic-masonry_f1": 0.3, "epochs": 3.0}


# --- a tracked training --------------------------------------------------------------------

def test_run_records_params_metrics_and_lineage(workspace: Path, tracked: tuple[TrainOutcome, str, Params]) -> None:
    _, run_id, params = tracked
    client = _client(workspace)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny"
    assert run.data.params["train.lr"] == str(params.train.lr)
    assert run.data.params["tuning.lora.targets"] == '["q", "v"]'
    assert run.data.params["data.img_size"] == "64"
    history = client.get_metric_history(run_id, "val/f1")
    assert sorted(m.step for m in history) == [1, 2]
    # Per-epoch curves carry a prefix (MLflow's run page draws them first); the summary does not.
    assert {"train/loss", "train/lr", "val/f1", "val/iou"} <= set(run.data.metrics)
    assert not {"train_loss", "val_f1", "lr"} & set(run.data.metrics)
    outcome = tracked[0]
    speeds = [e.images_per_second for e in outcome.fit.history]
    assert run.data.metrics["images_per_second"] == pytest.approx(sum(speeds) / len(speeds))
    assert run.data.metrics["best_val_f1"] == pytest.approx(outcome.fit.best_f1)
    for name in ("best_val_f1", "best_val_iou", "train_seconds", "images_per_second", "trainable_params", "total_params"):
        assert name in run.data.metrics, name
    tags = run.data.tags
    assert tags["data.dvc_md5"] == DVC_MD5
    assert tags["data.manifest_sha256"] == manifest_digest(workspace / "data/prepared")
    assert tags["model.variant"] == "vit_tiny" and tags["tuning.method"] == "full"
    assert tags["model.architecture"] == "sam/vit_tiny"
    assert tags["purpose"] == "test"
    commit = git_commit()
    if commit:
        assert tags["git.commit"] == commit and tags["git.dirty"] in ("true", "false")
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "synthetic"
    assert tags["data.manifest_sha256"].startswith(dataset.digest)
    assert {tag.key: tag.value for tag in inputs[0].tags}["mlflow.data.context"] == "training"
    assert str(workspace / "data/prepared") in dataset.source


def test_run_artifacts_and_run_file(workspace: Path, tracked: tuple[TrainOutcome, str, Params]) -> None:
    _, run_id, params = tracked
    client = _client(workspace)
    top = {item.path for item in client.list_artifacts(run_id)}
    assert {"history.csv", "metrics.json", "overlays"} <= top
    overlays = client.list_artifacts(run_id, "overlays")
    assert len(overlays) == 2 and all(item.path.endswith(".png") for item in overlays)
    run_file = json.loads((Path(params.train.out_dir) / RUN_FILE).read_text())
    assert run_file["run_id"] == run_id
    assert run_file["tracking_uri"] == params.mlflow.tracking_uri
    assert run_file["experiment_id"] == client.get_run(run_id).info.experiment_id
    assert run_file["model_uri"].startswith("models:/")
    # Artifacts stay in the workspace, not in a default ./mlruns elsewhere.
    assert any((workspace / "mlartifacts").rglob("model.safetensors"))


def test_logged_model_predicts_both_forms(workspace: Path, tracked: tuple[TrainOutcome, str, Params]) -> None:
    _, _, params = tracked
    model_uri = json.loads((Path(params.train.out_dir) / RUN_FILE).read_text())["model_uri"]
    mlflow.set_tracking_uri(params.mlflow.tracking_uri)
    loaded = mlflow.pyfunc.load_model(model_uri)
    rng = np.random.default_rng(0)
    small, wide = (rng.integers(0, 255, (50, 70, 3), dtype=np.uint8), rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))

    out = loaded.predict(pd.DataFrame({"image": [_png_base64(small), _png_base64(wide)]}))
    assert list(out.columns) == ["mask", "crack_fraction"]
    for encoded, image, fraction in zip(out["mask"], (small, wide), out["crack_fraction"]):
        mask = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert fraction == pytest.approx((mask > 0).mean())

    # The signature describes the DataFrame form; arrays go to the model itself.
    batch = np.stack([small, small[::-1]])
    masks = loaded.unwrap_python_model().predict(None, batch)
    assert masks.shape == (2, 50, 70) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    lowered = loaded.predict(pd.DataFrame({"image": [_png_base64(small)]}), params={"threshold": 0.01})
    assert lowered["crack_fraction"][0] >= out["crack_fraction"][0]


def _post_in_process(app, body: dict) -> tuple[int, dict]:
    """POST ``body`` as JSON to ``/invocations`` of an ASGI app, in this process (no port, no httpx)."""
    import asyncio

    data = json.dumps(body).encode()
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/invocations", "raw_path": b"/invocations", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def test_served_model_says_why_it_rejects_input(workspace: Path, tracked: tuple[TrainOutcome, str, Params],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # `mlflow models serve`'s app, driven in process. Once a bad image came back as a 400 saying only
    # "an unexpected error": the reason was in the server's log alone.
    from mlflow.pyfunc import scoring_server

    _, _, params = tracked
    model_uri = json.loads((Path(params.train.out_dir) / RUN_FILE).read_text())["model_uri"]
    mlflow.set_tracking_uri(params.mlflow.tracking_uri)
    monkeypatch.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", raising=False)  # init() sets it; undone after
    app = scoring_server.init(mlflow.pyfunc.load_model(model_uri))

    def request(*values: str) -> dict:
        return {"dataframe_split": {"columns": ["image"], "data": [[value] for value in values]}}

    good = _png_base64(np.full((20, 30, 3), 128, dtype=np.uint8))
    status, body = _post_in_process(app, request(good))
    assert status == 200 and len(body["predictions"]) == 1

    status, body = _post_in_process(app, request(good, "not base64!"))
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "column 'image' must hold base64-encoded image files (PNG, JPEG, ...); row 1 is not base64" in body["message"]

    status, body = _post_in_process(app, request(base64.b64encode(b"GIF89a, or so it says").decode()))
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "column 'image': row 0 is not a decodable image file" in body["message"]


def test_log_evaluation_adds_scores_and_files(workspace: Path, tracked: tuple[TrainOutcome, str, Params]) -> None:
    _, run_id, params = tracked
    eval_dir = workspace / "outputs/eval"
    (eval_dir / "overlays").mkdir(parents=True)
    (eval_dir / "report.md").write_text("# report\n")
    (eval_dir / "pr_curve.csv").write_text("recall,precision\n1,0\n")
    (eval_dir / "overlays/test_0000.png").write_bytes(b"png")
    log_evaluation(run_id, {"test": {"f1": 0.7, "iou": 0.5}, "zero_shot": {"mean": {"f1": 0.4}}, "note": "x"},
                   eval_dir, tracking_uri=params.mlflow.tracking_uri)
    client = _client(workspace)
    run = client.get_run(run_id)
    assert run.data.metrics["test_f1"] == 0.7 and run.data.metrics["zero_shot_mean_f1"] == 0.4
    assert run.info.status == "FINISHED"
    files = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/report.md", "evaluation/pr_curve.csv", "evaluation/overlays"} <= files


# --- failures and opting out ---------------------------------------------------------------

class _Boom(Callback):
    """Raises ``error`` at the end of the first epoch, or before training when ``at_start``."""

    def __init__(self, error: BaseException, at_start: bool = False) -> None:
        self.error, self.at_start = error, at_start

    def on_train_start(self, total_epochs: int) -> None:
        if self.at_start:
            raise self.error

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        raise self.error


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_failed_training_ends_run(workspace: Path, tracked: tuple, error: BaseException, status: str) -> None:
    params = _params(workspace, "train.epochs=1", "eval.n_overlays=0", f"train.out_dir={workspace}/outputs/{status}")
    boom = _Boom(error, at_start=status == "KILLED")
    with pytest.raises(type(error)):
        train_with_tracking(params, Path(params.train.out_dir), callbacks=[boom], progress=False, run_name=status)
    assert mlflow.active_run() is None
    client = _client(workspace)
    runs = client.search_runs([client.get_experiment_by_name("crackops").experiment_id],
                              filter_string=f"attributes.run_name = '{status}'")
    assert len(runs) == 1 and runs[0].info.status == status
    assert runs[0].data.tags["crackops.end_reason"].startswith(type(error).__name__)
    if status == "FAILED":
        assert "val/f1" in runs[0].data.metrics  # what was logged before the failure is kept
    assert not (Path(params.train.out_dir) / RUN_FILE).exists()


def test_disabled_tracking_logs_nothing(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params(workspace, "mlflow.enabled=false", f"mlflow.tracking_uri=sqlite:///{tmp_path}/off.db")
    calls = []

    def fake_train(*args: object, **kwargs: object) -> str:
        calls.append((args, kwargs))
        return "outcome"

    # The plain training is tested elsewhere; here only the delegation and the absence of a run matter.
    monkeypatch.setattr("pipeline.tracking.tracked_training.train_from_params", fake_train)
    assert train_with_tracking(params, None, progress=False) == ("outcome", None)
    assert calls == [((params, (), None, False), {"work": None, "selection": Selection()})]
    assert not (tmp_path / "off.db").exists()
    assert mlflow.active_run() is None


class _Prune(Callback):
    """Prunes the trial after its first epoch, as a sweep's pruner does: through the control flag."""

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        control.stop("pruned after epoch 1 (val_f1 0.0000)", pruned=True)


def test_nested_pruned_trial_ends_only_itself(workspace: Path, tracked: tuple) -> None:
    params = _params(workspace, "train.epochs=3", "mlflow.experiment=sweep")
    configure(params.mlflow)
    with mlflow.start_run(run_name="sweep") as parent:
        outcome, run_id = train_with_tracking(params, None, nested=True, callbacks=[_Prune()], progress=False,
                                              run_name="trial-0")
        assert mlflow.active_run().info.run_id == parent.info.run_id
    assert len(outcome.fit.history) == 1 and outcome.fit.control.pruned  # stopped after the epoch that pruned
    client = _client(workspace)
    (child,) = client.search_runs([parent.info.experiment_id], filter_string="attributes.run_name = 'trial-0'")
    assert child.info.run_id == run_id and child.info.status == "KILLED"
    assert child.data.tags["crackops.end_reason"] == "pruned: pruned after epoch 1 (val_f1 0.0000)"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_model_requirements_pin_every_family_s_libraries() -> None:
    from pipeline.tracking.pyfunc import pip_requirements

    names = {requirement.split("==")[0] for requirement in pip_requirements()}
    # timm builds the sam_lite student, torchvision DeepLabV3, segment-anything SAM.
    assert {"torch", "torchvision", "segment-anything", "timm", "safetensors"} <= names


@pytest.mark.parametrize("message, retried", [("UNIQUE constraint failed: datasets.dataset_uuid", True),
                                              ("connection refused", False)])
def test_dataset_input_retries_only_a_creation_race(workspace: Path, tracked: tuple, monkeypatch: pytest.MonkeyPatch,
                                                    message: str, retried: bool) -> None:
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import tracked_training

    calls: list[str] = []

    def log_input(dataset, context: str, tags: dict) -> None:
        calls.append(context)
        if len(calls) == 1:
            raise MlflowException(message)

    monkeypatch.setattr(tracked_training.mlflow, "log_input", log_input)
    monkeypatch.setattr(tracked_training.mlflow, "log_params", lambda values: None)
    params = tracked[2]
    if retried:
        tracked_training._log_inputs(params, "0" * 64)
        assert calls == ["training", "training"]
    else:
        with pytest.raises(MlflowException, match="connection refused"):
            tracked_training._log_inputs(params, "0" * 64)
        assert calls == ["training"]


def test_a_dvc_experiment_run_is_named_after_it_with_system_metrics(workspace: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc exp run` sets DVC_EXP_NAME for its stages: the MLflow run carries the experiment's name,
    samples CPU and memory while it trains, in an experiment that opens on its training runs."""
    from pipeline.tracking.setup import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

    monkeypatch.setenv("DVC_EXP_NAME", "lusty-bass")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's own setting; 10 s by default
    params = _params(workspace, "mlflow.experiment=dvc-exp")
    _, run_id = train_with_tracking(params, None, progress=False)
    client = _client(workspace)
    run = client.get_run(run_id)
    assert run.info.run_name == "lusty-bass"
    assert run.data.tags["dvc.exp_name"] == "lusty-bass" and run.data.tags["dvc.exp_baseline_rev"] == "a" * 40
    assert any(name.startswith("system/cpu_utilization") for name in run.data.metrics), sorted(run.data.metrics)
    experiment = client.get_experiment_by_name("dvc-exp")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_git_dirty_ignores_what_dvc_itself_edits(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results/plots").mkdir(parents=True)
    for name in ("params.yaml", "dvc.lock", "train.py", "results/metrics.json", "results/plots/history.csv"):
        (tmp_path / name).write_text("a: 1\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "base")
    (tmp_path / "params.yaml").write_text("a: 2\n")  # dvc exp run -S a=2
    (tmp_path / "dvc.lock").write_text("a: 2\n")  # dvc repro
    (tmp_path / "results/metrics.json").write_text("a: 2\n")  # a stage's git-tracked output, rewritten
    (tmp_path / "results/plots/history.csv").unlink()  # DVC removes a stage's outputs before running it
    assert git_dirty(tmp_path) is False
    (tmp_path / "train.py").write_text("a: 2\n")
    assert git_dirty(tmp_path) is True
