"""`crackops export`: sam_lite (real architecture, random weights) to ONNX FP32 and INT8, checked,
attached to its registered version, and run by `crackops predict` and the MLflow pyfunc model."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from crackops.cli import main
from pipeline.export.bundle import EXPORT_FILE, ONNX_FILES, file_entry, load_export
from pipeline.export.checks import FP32_TOLERANCE, load_split
from pipeline.export.onnx_graph import ExportError, export_onnx
from pipeline.inference.onnx_segmenter import OnnxSegmenter
from pipeline.inference.probabilities import predict_probabilities
from pipeline.params import load_params
from pipeline.training.trained import save_trained_model
from pipeline.tuning.build import build_model
from registry.export import EXPORT_TAG

NAME = "edge-test"
SIZE = 64


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_prepared) -> dict:
    """A random sam_lite model, logged and registered as version 1 (alias champion), then exported."""
    from pipeline.tracking.pyfunc import log_pyfunc_model

    root = tmp_path_factory.mktemp("export")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(0)
    params = load_params("missing.yaml", [f"data.img_size={SIZE}", "model.family=sam_lite",
                                          "model.student_checkpoint=null", "mlflow.enabled=false"])
    model_dir = root / "train"
    save_trained_model(build_model(params, load_weights=False), params, model_dir)
    mlflow.set_tracking_uri(tracking)
    try:
        # Artifacts in the test's folder: a sqlite store's default is ./mlruns in the working directory.
        mlflow.create_experiment("export-test", artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment("export-test")
        with mlflow.start_run() as run:
            info = log_pyfunc_model(model_dir)
            mlflow.log_metric("test_f1", 0.25)
        client = MlflowClient(tracking, registry_uri=tracking)
        version = mlflow.register_model(info.model_uri, NAME)
        client.set_registered_model_alias(NAME, "champion", version.version)
    finally:
        mlflow.set_tracking_uri(None)
    common = ["-S", f"data.prepared_dir={tiny_prepared}", "-S", f"mlflow.tracking_uri={tracking}",
              "-S", f"mlflow.registered_model={NAME}"]
    out = root / "edge"
    assert main(["export", "--int8", "--calibration-images", "4", "--output", str(out), *common]) == 0
    return {"root": root, "model_dir": model_dir, "out": out, "common": common, "tracking": tracking,
            "run_id": run.info.run_id, "prepared": tiny_prepared, "params": params}


def test_export_writes_fp32_and_int8_that_onnxruntime_runs_with_a_complete_description(workspace):
    out = workspace["out"]
    described = json.loads((out / EXPORT_FILE).read_text())
    assert set(described["files"]) == {"fp32", "int8"}
    for precision, entry in described["files"].items():
        assert entry["file"] == ONNX_FILES[precision]
        actual = file_entry(out / entry["file"])
        assert (entry["bytes"], entry["sha256"]) == (actual["bytes"], actual["sha256"])
        graph, params = load_export(out, precision)
        probabilities = graph.run(np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32))
        assert probabilities.shape == (2, 1, SIZE, SIZE) and 0 <= probabilities.min() <= probabilities.max() <= 1
        assert params.model.family == "sam_lite" and params.data.img_size == SIZE
    # --int8-method auto: sam_lite's weights are mostly in matrix products, so dynamic (no calibration).
    assert described["files"]["int8"]["quantization"]["method"] == "dynamic"
    assert "calibration_images" not in described["files"]["int8"]["quantization"]
    assert described["files"]["int8"]["bytes"] < described["files"]["fp32"]["bytes"] / 3
    assert described["input"]["shape"] == [1, 3, SIZE, SIZE] and described["input"]["range"] == [0.0, 1.0]
    assert described["input"]["normalisation"]["mean"] == [123.675, 116.28, 103.53]  # SAM's, inside the graph
    assert described["output"]["shape"] == [1, 1, SIZE, SIZE]
    assert described["threshold"] == workspace["params"].eval.threshold
    source = described["source"]
    assert (source["registered_model"], source["version"], source["run_id"]) == (NAME, "1", workspace["run_id"])
    assert source["model_uri"] == f"models:/{NAME}@champion"
    checks, accuracy = described["checks"], described["accuracy"]
    assert 0 <= checks["fp32_max_abs_diff"] <= FP32_TOLERANCE and checks["int8_max_abs_diff"] > 0
    assert accuracy["images"] == len(load_split(workspace["prepared"], "test").images)
    assert accuracy["int8_f1_change"] == pytest.approx(accuracy["f1"]["int8"] - accuracy["f1"]["fp32"])
    assert {"opset", "torch", "onnxruntime"} <= set(described["exporter"])


def test_fp32_graph_gives_pytorch_probabilities_within_1e4(workspace):
    from pipeline.training.trained import load_trained_model

    model, params = load_trained_model(workspace["model_dir"])
    graph, _ = load_export(workspace["out"], "fp32")
    images = load_split(workspace["prepared"], "test").images + load_split(workspace["prepared"], "val").images
    gap = max(float(np.abs(a - b).max()) for a, b in zip(predict_probabilities(model, images, SIZE),
                                                          predict_probabilities(graph, images, SIZE)))
    assert gap <= 1e-4


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in sorted(folder.glob("*_mask.png"))}


def test_predict_with_the_onnx_export_writes_pytorch_masks(workspace, tmp_path):
    """Same masks from the PyTorch model, the export folder and the version's attached export, except
    where PyTorch's own probability is within the FP32 bound of the threshold."""
    from pipeline.training.trained import load_trained_model

    photos = workspace["prepared"] / "test" / "images"
    common = workspace["common"]
    runs = {"pytorch": ["--model-uri", str(workspace["model_dir"])],
            "folder": ["--model-uri", str(workspace["out"])],
            "version": ["--format", "onnx"]}  # the champion's attached export
    for name, extra in runs.items():
        assert main(["predict", str(photos), "--output", str(tmp_path / name), "--no-progress", *extra, *common]) == 0
    model, params = load_trained_model(workspace["model_dir"])
    reference = _masks(tmp_path / "pytorch")
    assert len(reference) == len(list(photos.iterdir()))
    for name in ("folder", "version"):
        masks = _masks(tmp_path / name)
        assert masks.keys() == reference.keys()
        for file, mask in masks.items():
            image = cv2.cvtColor(cv2.imread(str(photos / file.replace("_mask", ""))), cv2.COLOR_BGR2RGB)
            probability = predict_probabilities(model, [image], SIZE)[0]
            decided = np.abs(probability - params.eval.threshold) > FP32_TOLERANCE
            assert decided.mean() > 0.5
            np.testing.assert_array_equal(mask[decided], reference[file][decided])


def test_export_is_attached_to_the_registered_version_and_served_by_pyfunc(workspace, tmp_path):
    client = MlflowClient(workspace["tracking"], registry_uri=workspace["tracking"])
    tags = client.get_model_version(NAME, "1").tags
    photo = workspace["prepared"] / "test" / "images"
    image_file = sorted(photo.iterdir())[0]
    frame = pd.DataFrame({"image": [base64.b64encode(image_file.read_bytes()).decode()]})
    image = cv2.cvtColor(cv2.imread(str(image_file)), cv2.COLOR_BGR2RGB)
    mlflow.set_tracking_uri(workspace["tracking"])
    try:
        for precision in ("fp32", "int8"):
            uri = tags[EXPORT_TAG.format(precision=precision)]
            assert uri == f"runs:/{workspace['run_id']}/edge/onnx-{precision}"
            served = mlflow.pyfunc.load_model(uri)
            assert served.metadata.metadata["precision"] == precision
            mask = cv2.imdecode(np.frombuffer(base64.b64decode(served.predict(frame)["mask"][0]), np.uint8), 0)
            graph, params = load_export(workspace["out"], precision)
            expected = predict_probabilities(graph, [image], SIZE)[0] >= params.eval.threshold
            np.testing.assert_array_equal(mask > 0, expected)
    finally:
        mlflow.set_tracking_uri(None)
    # The INT8 graph through `crackops predict`, found from the registry.
    assert main(["predict", str(image_file), "--format", "onnx", "--int8", "--output", str(tmp_path),
                 "--no-progress", *workspace["common"]]) == 0


class _Bessel(torch.nn.Module):
    """A model with an operator torch's ONNX exporter cannot translate."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.special.i1e(image[:, :1])


def test_unsupported_operator_is_one_line_and_leaves_nothing(workspace, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match=r"cannot export bessel-test to ONNX: operator prims.bessel_i1e has no ONNX"):
        export_onnx(_Bessel(), 8, tmp_path / "model.onnx", "bessel-test")
    assert not list(tmp_path.iterdir())
    # Through the command: the folder is written atomically, so a failed export leaves none behind.
    import pipeline.export.export as export

    monkeypatch.setattr(export, "export_onnx", lambda model, size, path, label: export_onnx(_Bessel(), 8, path, label))
    out = tmp_path / "edge"
    assert main(["export", "--model-uri", str(workspace["model_dir"]), "--output", str(out), "--no-attach",
                 *workspace["common"]]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_never_replaces_a_folder_that_is_not_an_export(workspace, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0001.jpg").write_bytes(b"a photo")
    assert main(["export", "--model-uri", str(workspace["model_dir"]), "--output", str(photos), "--no-attach",
                 *workspace["common"]]) == 2
    assert "is not a `crackops export` folder: choose a new or empty folder" in capsys.readouterr().err
    assert [path.name for path in photos.iterdir()] == ["IMG_0001.jpg"]


@pytest.mark.parametrize("problem", ["missing", "not-crackops", "pytorch-as-onnx", "no-int8", "no-parity-images",
                                     "unset-alias"])
def test_bad_model_uris_are_one_clear_line(problem, workspace, tmp_path, capsys):
    folder = tmp_path / "model"
    argv = ["export", "--model-uri", str(folder), "--output", str(tmp_path / "edge")]
    if problem == "missing":
        expected = "neither a folder nor a model URI"
    elif problem == "not-crackops":
        folder.mkdir()
        (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: something.else\n")
        expected = "is not a crackops model"
    elif problem == "pytorch-as-onnx":
        argv = ["predict", str(workspace["prepared"] / "test" / "images"), "--model-uri", str(workspace["model_dir"]),
                "--format", "onnx", "--output", str(tmp_path / "masks")]
        expected = "is a PyTorch model, not an ONNX export"
    elif problem == "unset-alias":  # `make demo` registers a candidate; champion comes with `crackops promote`
        argv = ["export", "--model-uri", f"models:/{NAME}@nobody", "--output", str(tmp_path / "edge")]
        expected = f"cannot download MLmodel of models:/{NAME}@nobody: Registered model alias nobody not found"
    elif problem == "no-parity-images":
        argv = ["export", "--model-uri", str(workspace["model_dir"]), "--parity-images", "0", "--no-attach",
                "--output", str(tmp_path / "edge")]
        expected = "--parity-images and --calibration-images must be at least 1"
    else:  # an FP32-only export asked for its INT8 graph
        fp32_only = tmp_path / "fp32-only"
        fp32_only.mkdir()
        for name in (ONNX_FILES["fp32"], EXPORT_FILE, "params.yaml"):
            (fp32_only / name).write_bytes((workspace["out"] / name).read_bytes())
        described = json.loads((fp32_only / EXPORT_FILE).read_text())
        del described["files"]["int8"]
        (fp32_only / EXPORT_FILE).write_text(json.dumps(described))
        argv = ["predict", str(workspace["prepared"] / "test" / "images"), "--model-uri", str(fp32_only),
                "--format", "onnx", "--int8", "--output", str(tmp_path / "masks")]
        expected = "holds no int8 model"
    assert main([*argv, *workspace["common"]]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "edge").exists()


def test_onnx_segmenter_refuses_a_graph_that_is_not_a_crackops_export(tmp_path):
    torch.onnx.export(torch.nn.Identity().eval(), (torch.rand(1, 3, 8, 8),), str(tmp_path / "other.onnx"),
                      input_names=["x"], output_names=["y"], dynamo=True, verbose=False)
    with pytest.raises(Exception, match="is not a crackops export"):
        OnnxSegmenter(tmp_path / "other.onnx")


def _sam(*overrides: str):
    params = load_params("missing.yaml", [f"data.img_size={SIZE}", "model.family=sam", "model.variant=vit_tiny",
                                          "mlflow.enabled=false", *overrides])
    torch.manual_seed(0)
    model = build_model(params, load_weights=False).eval()
    with torch.no_grad():  # LoRA's B starts at zero; a trained one does not
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    return model, params


def test_lora_is_merged_into_its_base_layers_for_export():
    from peft.tuners.lora import LoraLayer

    from pipeline.export.onnx_graph import merged_for_export

    model, _ = _sam("tuning.method=lora", "tuning.lora.targets=[q,v]", "tuning.lora.rank=4")
    assert any(isinstance(module, LoraLayer) for module in model.modules())
    merged = merged_for_export(model)
    assert not any(isinstance(module, LoraLayer) for module in merged.modules())
    assert any(isinstance(module, LoraLayer) for module in model.modules())  # the model itself is untouched
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(merged(images), model(images), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # three exports of about 20 s each on 2 CPU cores
@pytest.mark.parametrize("overrides", [
    ["tuning.method=lora", "tuning.lora.targets=[q,v]", "tuning.lora.rank=4"],
    ["tuning.method=cracksam", "model.mask_head=class_tokens", "model.input_norm=none"],
    ["model.family=deeplabv3", "model.input_norm=none"],
], ids=["sam-lora", "cracksam-adapters", "deeplabv3"])
def test_sam_tunings_and_deeplab_export_within_the_fp32_bound(overrides, tmp_path, tiny_prepared):
    from pipeline.export.checks import max_probability_gap
    from pipeline.inference.probabilities import TorchSegmenter

    model, _ = _sam(*overrides)
    export_onnx(model, SIZE, tmp_path / "model.onnx", "test")
    images = load_split(tiny_prepared, "test").images
    assert max_probability_gap(TorchSegmenter(model), OnnxSegmenter(tmp_path / "model.onnx"), images) <= FP32_TOLERANCE


@pytest.mark.slow  # starts `mlflow models serve` (about 20 s on 2 CPU cores)
def test_mlflow_models_serve_runs_the_attached_int8_export(workspace, tmp_path):
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from registry.local_server import free_port, stop_process_group, wait_until_up

    uri = MlflowClient(workspace["tracking"]).get_model_version(NAME, "1").tags[EXPORT_TAG.format(precision="int8")]
    bin_dir = Path(sys.executable).parent
    port, log = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": workspace["tracking"],
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with log.open("w") as out:
        server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                                   "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def post(rows: list[str]) -> urllib.request.Request:
        payload = {"dataframe_split": {"columns": ["image"], "data": [[row] for row in rows]}}
        return urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                      headers={"Content-Type": "application/json"})

    image_file = sorted((workspace["prepared"] / "test" / "images").iterdir())[0]
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log, timeout=120)
        with urllib.request.urlopen(post([base64.b64encode(image_file.read_bytes()).decode()]), timeout=60) as answer:
            (prediction,) = json.loads(answer.read())["predictions"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post(["not base64!"]), timeout=60)
    finally:
        stop_process_group(server, grace=5)
    assert refused.value.code == 400 and "must hold base64-encoded image files" in refused.value.read().decode()
    served = cv2.imdecode(np.frombuffer(base64.b64decode(prediction["mask"]), np.uint8), cv2.IMREAD_GRAYSCALE)
    graph, params = load_export(workspace["out"], "int8")
    image = cv2.cvtColor(cv2.imread(str(image_file)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(served > 0, predict_probabilities(graph, [image], SIZE)[0] >= params.eval.threshold)


def test_static_int8_calibrates_on_training_images_and_runs(workspace, tmp_path):
    from pipeline.export.export import at_input_size
    from pipeline.export.quantize import quantize_int8

    fp32 = workspace["out"] / ONNX_FILES["fp32"]
    images = at_input_size(load_split(workspace["prepared"], "train").images[:2], SIZE)
    settings = quantize_int8(fp32, tmp_path / "static.onnx", "static", images)
    assert (settings["method"], settings["format"], settings["calibration_images"]) == ("static", "QDQ", 2)
    probabilities = OnnxSegmenter(tmp_path / "static.onnx").run(np.full((1, 3, SIZE, SIZE), 0.5, np.float32))
    assert probabilities.shape == (1, 1, SIZE, SIZE) and 0 <= probabilities.min() <= probabilities.max() <= 1
    with pytest.raises(ValueError, match="needs calibration images"):
        quantize_int8(fp32, tmp_path / "nothing.onnx", "static", [])


def _graph_of(weights: dict[str, tuple[str, tuple[int, ...]]]) -> "onnx.ModelProto":
    """A graph with one node per weight: name -> (operator, weight shape); only the weights matter."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node(op, ["x", name], [f"{name}_out"]) for name, (op, _) in weights.items()]
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, (_, shape) in weights.items()]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [], inits))


def test_auto_int8_is_dynamic_for_transformers_and_static_for_convolutional_graphs(workspace, tmp_path):
    import onnx

    from pipeline.export.quantize import resolve_method, weights_by_operator

    assert resolve_method(workspace["out"] / ONNX_FILES["fp32"], "auto") == "dynamic"  # sam_lite
    mostly_convolutions = {"stem": ("Conv", (64, 3, 7, 7)), "classifier": ("Gemm", (10, 64))}
    onnx.save(_graph_of(mostly_convolutions), tmp_path / "cnn.onnx")
    assert weights_by_operator(tmp_path / "cnn.onnx") == {"matrix_products": 640, "convolutions": 64 * 3 * 49}
    assert resolve_method(tmp_path / "cnn.onnx", "auto") == "static"
    assert resolve_method(tmp_path / "cnn.onnx", "dynamic") == "dynamic"
    with pytest.raises(ValueError, match="unknown INT8 method 'int4'"):
        resolve_method(tmp_path / "cnn.onnx", "int4")


def test_dynamic_int8_stores_other_weights_as_int8_that_onnxruntime_folds_at_load(workspace, tmp_path):
    """The convolution and attention-bias weights the dynamic method does not compute in int8 are
    stored int8 (a quarter of the bytes), rebuilt within half a step, and folded into constants
    when a session loads, so they cost nothing per image."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from pipeline.export.quantize import MIN_STORED_INT8, store_weights_int8

    fp32 = onnx.load(workspace["out"] / ONNX_FILES["fp32"])
    original = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    large = {name for name, w in original.items() if w.dtype == np.float32 and w.ndim >= 2 and w.size >= MIN_STORED_INT8}
    assert store_weights_int8(fp32) == len(large) > 0
    stored = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    assert not large & set(stored)  # no large float weight is left
    for name in large:
        values, scale = stored[f"{name}_int8"], stored[f"{name}_int8_scale"]
        assert values.dtype == np.int8 and values.shape == original[name].shape
        assert np.all(np.abs(values * scale - original[name]) <= scale / 2 + 1e-7)
    onnx.save(fp32, tmp_path / "stored.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(str(tmp_path / "stored.onnx"), options, providers=["CPUExecutionProvider"])
    loaded = onnx.load(tmp_path / "loaded.onnx")
    assert not [n.name for n in loaded.graph.node if n.name.endswith(("_cast", "_rescale"))]
    int8 = onnx.load(workspace["out"] / ONNX_FILES["int8"])
    # Every matrix product with a weight (sam_lite's are Gemm) computes in int8.
    gemms = [n for n in onnx.load(workspace["out"] / ONNX_FILES["fp32"]).graph.node if n.op_type == "Gemm"]
    assert len(gemms) == len([n for n in int8.graph.node if n.op_type == "MatMulInteger"]) > 0
    assert not [t.name for t in int8.graph.initializer
                if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2 and np.prod(t.dims) >= MIN_STORED_INT8]


def test_a_trained_folder_exports_without_its_tracking_store(tmp_path, capsys):
    """mlflow_run.json names a run the given store does not hold (another machine's): a note, no scores."""
    from registry.export import export_source

    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "mlflow_run.json").write_text(json.dumps({"run_id": "0123456789abcdef0123456789abcdef"}))
    tracking = f"sqlite:///{tmp_path / 'other.db'}"
    source = export_source(MlflowClient(tracking, registry_uri=tracking), str(folder))
    assert (source["run_id"], source["metrics"], source["version"]) == ("0123456789abcdef0123456789abcdef", {}, None)
    assert "note: the scores of run 0123456789abcdef0123456789abcdef are not in export.json" in capsys.readouterr().out

