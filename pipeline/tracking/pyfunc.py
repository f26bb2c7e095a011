"""The trained segmenter as an MLflow pyfunc model: DataFrames to image arrays and back.

Prediction itself (resizing, tiling, thresholding) is :mod:`pipeline.inference.probabilities`.

Input forms:

* a DataFrame with a string column ``image``: base64-encoded image files (PNG/JPEG, any size);
  returns a DataFrame with ``mask`` (base64 PNG, 0/255, the image's size) and ``crack_fraction``.
  This is the logged signature, so it is what ``mlflow models serve`` accepts.
* a uint8 array (N, H, W, 3) of RGB images; returns uint8 (N, H, W) masks of 0/1. The signature
  describes the DataFrame form, so MLflow's schema check rejects arrays: call the unwrapped model,
  ``mlflow.pyfunc.load_model(uri).unwrap_python_model().predict(None, images)``.

Bad input raises :class:`BadInput`: ``mlflow models serve`` answers it with HTTP 400 and the
reason in the JSON body's ``message`` (any other exception becomes a 400 whose message only says
"an unexpected error", the reason left in the server's log).

Weights travel as safetensors plus ``params.yaml``, the code as the ``pipeline`` package and a
models-from-code entry file: nothing is pickled.

:mod:`pipeline.tracking.onnx_pyfunc` serves a ``crackops export`` graph with the same inputs and outputs.
"""
from __future__ import annotations

import base64
import binascii
import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from pipeline.inference.probabilities import BadImage, Segmenter, predict_masks
from pipeline.training.precision import pick_device
from pipeline.training.trained import PARAMS_FILE, WEIGHTS_FILE, load_trained_model

if TYPE_CHECKING:
    from torch import nn

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `pipeline` package, shipped as model code
# Pinned from the running environment, so MLflow does not spend time inferring them at log time.
PIP_PACKAGES = ("torch", "torchvision", "segment-anything", "peft", "safetensors", "opencv-python-headless",
                "pyyaml", "pydantic", "numpy", "pandas", "albumentations", "timm", "onnxruntime")
IMAGE_COLUMN = "image"
MODEL_CODE_FILE = "crack_segmenter.py"
MODEL_CODE = (
    "from mlflow.models import set_model\n\n"
    "from {module} import {cls}\n\n"
    "set_model({cls}())\n"
)


class BadInput(MlflowException, ValueError):
    """Input the model cannot take; the scoring server sends the message back with HTTP 400.

    A ValueError too, so callers of the unwrapped model keep catching what they caught before.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def decode_image(data: str | bytes, row: int | None = None) -> np.ndarray:
    """RGB uint8 array from base64 text (or raw file bytes) of a PNG/JPEG/... file.

    ``row`` (the DataFrame row) only makes the message point at the bad value.
    """
    which = f"row {row}" if row is not None else "the value"
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as error:
            raise BadInput(f"column {IMAGE_COLUMN!r} must hold base64-encoded image files (PNG, JPEG, ...); "
                           f"{which} is not base64 ({error})") from None
    elif not isinstance(data, (bytes, bytearray)):
        raise BadInput(f"column {IMAGE_COLUMN!r} must hold base64-encoded image files (PNG, JPEG, ...); "
                       f"{which} is a {type(data).__name__}")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise BadInput(f"column {IMAGE_COLUMN!r}: {which} is not a decodable image file "
                       "(empty, truncated, corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def encode_png_base64(array: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


class ImageSegmenterModel(mlflow.pyfunc.PythonModel):
    """Crack masks of whole images from ``self.segmenter``, set by the subclass's ``load_context``."""

    # The explicit signature validates inputs; MLflow's type-hint validation (and its warning at
    # import time about a predict without hints) does not apply to a two-form predict.
    _skip_type_hint_validation = True
    segmenter: Segmenter | nn.Module
    params: Any

    # model_input (a DataFrame or an array) stays unannotated: MLflow would try, and fail with a
    # warning, to derive a signature from the hint; the explicit signature is the contract.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:  # noqa: ANN001
        """Masks for a DataFrame of base64 images, or for a uint8 (N, H, W, 3) RGB array."""
        given = (params or {}).get("threshold")
        threshold = float(given) if given is not None else self.params.eval.threshold
        try:
            if isinstance(model_input, np.ndarray):
                return self._predict_array(model_input, threshold)
            if isinstance(model_input, pd.DataFrame):
                return self._predict_frame(model_input, threshold)
        except BadImage as error:
            raise BadInput(str(error)) from None  # the scoring server answers it with HTTP 400
        raise TypeError(f"expected a pandas DataFrame or a numpy array, got {type(model_input).__name__}")

    def _predict_array(self, images: np.ndarray, threshold: float) -> np.ndarray:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise BadInput(f"expected a uint8 (N, H, W, 3) RGB array, got {images.dtype} {images.shape}")
        masks = predict_masks(self.segmenter, list(images), self.params.data.img_size, threshold,
                              self.params.eval.batch_size)
        return np.stack(masks) if masks else np.zeros(images.shape[:3], dtype=np.uint8)

    def _predict_frame(self, frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
        if IMAGE_COLUMN not in frame.columns:
            raise BadInput(f"expected a column {IMAGE_COLUMN!r} of base64-encoded images, "
                           f"got columns {list(frame.columns)}")
        size, batch_size = self.params.data.img_size, self.params.eval.batch_size
        values = list(frame[IMAGE_COLUMN])
        encoded: list[str] = []
        fractions: list[float] = []
        # One batch of photos decoded at a time: a request of many large photos never holds
        # all their pixels and probability maps at once, only their encoded masks.
        for start in range(0, len(values), batch_size):
            images = [decode_image(value, start + i) for i, value in enumerate(values[start:start + batch_size])]
            for mask in predict_masks(self.segmenter, images, size, threshold, batch_size):
                fractions.append(np.count_nonzero(mask) / mask.size)
                encoded.append(encode_png_base64(mask * 255))
        return pd.DataFrame({"mask": encoded, "crack_fraction": fractions})


class CrackSegmenterModel(ImageSegmenterModel):
    """The trained PyTorch model (safetensors + params.yaml), on the best device there is."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        weights, params_file = Path(context.artifacts["weights"]), Path(context.artifacts["params"])
        directory = weights.parent
        if weights.name != WEIGHTS_FILE or params_file != directory / PARAMS_FILE:
            # load_trained_model wants both files side by side under their usual names.
            directory = Path(tempfile.mkdtemp(prefix="crackops-model-"))
            shutil.copy(weights, directory / WEIGHTS_FILE)
            shutil.copy(params_file, directory / PARAMS_FILE)
        model, self.params = load_trained_model(directory)
        self.segmenter = model.to(pick_device())


def pip_requirements() -> list[str]:
    """``name==version`` for the packages the model needs, as installed here."""
    pins = []
    for name in PIP_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def model_signature(threshold: float) -> ModelSignature:
    """DataFrame in (``image``), DataFrame out (``mask``, ``crack_fraction``); ``threshold`` a param."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN)]),
        outputs=Schema([ColSpec(DataType.string, "mask"), ColSpec(DataType.double, "crack_fraction")]),
        params=ParamSchema([ParamSpec("threshold", DataType.double, threshold)]),
    )


def input_example() -> pd.DataFrame:
    """One small synthetic image (a dark diagonal line on grey): cheap for MLflow to validate."""
    image = np.full((32, 48, 3), 150, dtype=np.uint8)
    cv2.line(image, (2, 3), (45, 28), (40, 40, 40), 2)
    return pd.DataFrame({IMAGE_COLUMN: [encode_png_base64(image)]})


def model_code_files(folder: Path, model_class: type) -> tuple[Path, Path]:
    """A clean copy of the ``pipeline`` package and the models-from-code file naming ``model_class``."""
    code = folder / PACKAGE_DIR.name
    # No __pycache__ from this interpreter inside the model.
    shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # Models from code: the model class is imported from the shipped package, never unpickled.
    model_code = folder / MODEL_CODE_FILE
    model_code.write_text(MODEL_CODE.format(module=model_class.__module__, cls=model_class.__name__))
    return code, model_code


def log_pyfunc_model(model_dir: Path, name: str = "model") -> ModelInfo:
    """Log the trained model in ``model_dir`` (safetensors + params.yaml) to the active run."""
    model_dir = Path(model_dir)
    weights, params_file = model_dir / WEIGHTS_FILE, model_dir / PARAMS_FILE
    saved = yaml.safe_load(params_file.read_text())
    threshold = float(saved.get("eval", {}).get("threshold", 0.5))
    with tempfile.TemporaryDirectory(prefix="crackops-code-") as tmp:
        code, model_code = model_code_files(Path(tmp), CrackSegmenterModel)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts={"weights": str(weights), "params": str(params_file)},
            code_paths=[str(code)],
            signature=model_signature(threshold),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
            metadata={"img_size": saved.get("data", {}).get("img_size"),
                      "variant": saved.get("model", {}).get("variant"),
                      "tuning": saved.get("tuning", {}).get("method")},
        )
