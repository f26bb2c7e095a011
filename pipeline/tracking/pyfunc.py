"""The trained segmenter as an MLflow pyfunc model.

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
"""
from __future__ import annotations

import base64
import binascii
import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from torch import nn

from pipeline.models.trained import PARAMS_FILE, WEIGHTS_FILE, load_trained_model
from pipeline.training.precision import pick_device

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `pipeline` package, shipped as model code
# Pinned from the running environment, so MLflow does not spend time inferring them at log time.
PIP_PACKAGES = ("torch", "torchvision", "segment-anything", "peft", "safetensors", "opencv-python-headless",
                "pyyaml", "pydantic", "numpy", "pandas", "albumentations", "timm")
IMAGE_COLUMN = "image"
MODEL_CODE_FILE = "crack_segmenter.py"
MODEL_CODE = (
    "from mlflow.models import set_model\n\n"
    "from pipeline.tracking.pyfunc import CrackSegmenterModel\n\n"
    "set_model(CrackSegmenterModel())\n"
)


class BadInput(MlflowException, ValueError):
    """Input the model cannot take; the scoring server sends the message back with HTTP 400.

    A ValueError too, so callers of the unwrapped model keep catching what they caught before.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from grayscale, RGB or RGBA uint8 arrays."""
    if image.dtype != np.uint8:
        raise BadInput(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise BadInput(f"images must be HxW, HxWx3 or HxWx4, got shape {image.shape}")


def predict_probabilities(
    model: nn.Module, images: list[np.ndarray], img_size: int, batch_size: int = 4,
    tile: int | None = None, overlap: int | None = None,
) -> list[np.ndarray]:
    """Crack probability maps (float32, each image's own HxW) for RGB uint8 images of any size.

    Images larger than ``tile`` (default 2 x ``img_size``) on a side are predicted in overlapping
    tiles (``pipeline.inference.tiling``), so memory stays bounded; smaller ones whole.
    """
    from pipeline.inference.tiling import default_overlap, default_tile, tiled_probabilities

    tile = tile or default_tile(img_size)
    overlap = default_overlap(tile) if overlap is None else overlap
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = [_as_rgb(np.asarray(image)) for image in images[start:start + batch_size]]
        small = [image for image in chunk if max(image.shape[:2]) <= tile]
        whole = iter(_predict_resized(model, small, img_size, batch_size))
        for image in chunk:
            out.append(next(whole) if max(image.shape[:2]) <= tile else tiled_probabilities(
                image, lambda crops: _predict_resized(model, list(crops), img_size, batch_size),
                tile, overlap, batch_size))
    return out


def predict_mask(
    model: nn.Module, image: np.ndarray, img_size: int, threshold: float, batch_size: int = 4,
    tile: int | None = None, overlap: int | None = None,
) -> np.ndarray:
    """The 0/1 crack mask (uint8, the image's HxW) of :func:`predict_probabilities` at ``threshold``.

    A tiled image is thresholded band by band as :func:`~pipeline.inference.tiling.tiled_rows`
    finishes its rows: no full-size probability map is ever held, only the image and its mask.
    """
    from pipeline.inference.tiling import default_overlap, default_tile, tiled_rows

    image = _as_rgb(np.asarray(image))
    tile = tile or default_tile(img_size)
    overlap = default_overlap(tile) if overlap is None else overlap
    if max(image.shape[:2]) <= tile:
        return np.greater_equal(_predict_resized(model, [image], img_size, batch_size)[0], threshold).view(np.uint8)
    mask = np.empty(image.shape[:2], dtype=np.uint8)
    rows = tiled_rows(image, lambda crops: _predict_resized(model, list(crops), img_size, batch_size),
                      tile, overlap, batch_size)
    for top, band in rows:
        np.greater_equal(band, threshold, out=mask[top:top + band.shape[0]].view(bool))
    return mask


@torch.no_grad()
def _predict_resized(model: nn.Module, images: list[np.ndarray], img_size: int, batch_size: int) -> list[np.ndarray]:
    """Each image resized to ``img_size`` (INTER_AREA, as prepare does), the probabilities resized
    back with linear interpolation, so thresholding happens at the original resolution.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = [_as_rgb(np.asarray(image)) for image in images[start:start + batch_size]]
            batch = np.stack([
                image if image.shape[:2] == (img_size, img_size)
                else cv2.resize(image, (img_size, img_size), interpolation=cv2.INTER_AREA)
                for image in chunk
            ])
            tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0).to(device)
            probs = torch.sigmoid(model(tensor).float())[:, 0].cpu().numpy()
            for image, prob in zip(chunk, probs):
                height, width = image.shape[:2]
                if prob.shape != (height, width):
                    prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
                out.append(prob.astype(np.float32, copy=False))
    finally:
        model.train(was_training)
    return out


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


class CrackSegmenterModel(mlflow.pyfunc.PythonModel):
    """Prompt-free SAM crack segmentation over whole images."""

    # The explicit signature validates inputs; MLflow's type-hint validation (and its warning at
    # import time about a predict without hints) does not apply to a two-form predict.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        weights, params_file = Path(context.artifacts["weights"]), Path(context.artifacts["params"])
        directory = weights.parent
        if weights.name != WEIGHTS_FILE or params_file != directory / PARAMS_FILE:
            # load_trained_model wants both files side by side under their usual names.
            directory = Path(tempfile.mkdtemp(prefix="crackops-model-"))
            shutil.copy(weights, directory / WEIGHTS_FILE)
            shutil.copy(params_file, directory / PARAMS_FILE)
        model, self.params = load_trained_model(directory)
        self.model = model.to(pick_device())

    # model_input (a DataFrame or an array) stays unannotated: MLflow would try, and fail with a
    # warning, to derive a signature from the hint; the explicit signature is the contract.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:  # noqa: ANN001
        """Masks for a DataFrame of base64 images, or for a uint8 (N, H, W, 3) RGB array."""
        given = (params or {}).get("threshold")
        threshold = float(given) if given is not None else self.params.eval.threshold
        size, batch_size = self.params.data.img_size, self.params.eval.batch_size
        if isinstance(model_input, np.ndarray):
            if model_input.ndim != 4 or model_input.shape[3] != 3 or model_input.dtype != np.uint8:
                raise BadInput(f"expected a uint8 (N, H, W, 3) RGB array, got {model_input.dtype} {model_input.shape}")
            probs = predict_probabilities(self.model, list(model_input), size, batch_size)
            masks = [(prob >= threshold).astype(np.uint8) for prob in probs]
            return np.stack(masks) if masks else np.zeros(model_input.shape[:3], dtype=np.uint8)
        if isinstance(model_input, pd.DataFrame):
            if IMAGE_COLUMN not in model_input.columns:
                raise BadInput(f"expected a column {IMAGE_COLUMN!r} of base64-encoded images, "
                               f"got columns {list(model_input.columns)}")
            values = list(model_input[IMAGE_COLUMN])
            encoded: list[str] = []
            fractions: list[float] = []
            # One batch of photos decoded at a time: a request of many large photos never holds
            # all their pixels and probability maps at once, only their encoded masks.
            for start in range(0, len(values), batch_size):
                images = [decode_image(value, start + i) for i, value in enumerate(values[start:start + batch_size])]
                for prob in predict_probabilities(self.model, images, size, batch_size):
                    mask = np.greater_equal(prob, threshold).view(np.uint8)
                    fractions.append(np.count_nonzero(mask) / mask.size)
                    encoded.append(encode_png_base64(mask * 255))
            return pd.DataFrame({"mask": encoded, "crack_fraction": fractions})
        raise TypeError(f"expected a pandas DataFrame or a numpy array, got {type(model_input).__name__}")


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


def log_pyfunc_model(model_dir: Path, name: str = "model") -> ModelInfo:
    """Log the trained model in ``model_dir`` (safetensors + params.yaml) to the active run."""
    model_dir = Path(model_dir)
    weights, params_file = model_dir / WEIGHTS_FILE, model_dir / PARAMS_FILE
    saved = yaml.safe_load(params_file.read_text())
    threshold = float(saved.get("eval", {}).get("threshold", 0.5))
    with tempfile.TemporaryDirectory(prefix="crackops-code-") as tmp:
        # A clean copy: no __pycache__ from this interpreter inside the model.
        code = Path(tmp) / PACKAGE_DIR.name
        shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # Models from code: the model class is imported from the shipped package, never unpickled.
        model_code = Path(tmp) / MODEL_CODE_FILE
        model_code.write_text(MODEL_CODE)
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
