"""A ``crackops export`` graph (FP32 or INT8) as an MLflow pyfunc model, run by onnxruntime.

It takes and returns what the PyTorch model of :mod:`pipeline.tracking.pyfunc` does (base64
images in a DataFrame, or uint8 arrays), so ``mlflow models serve`` answers the same requests.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from pipeline.export.bundle import EXPORT_FILE, ONNX_FILES, load_export, read_export
from pipeline.export.bundle import PARAMS_FILE as EXPORT_PARAMS_FILE
from pipeline.tracking.pyfunc import (ImageSegmenterModel, input_example, model_code_files, model_signature,
                                      pip_requirements)


class OnnxCrackSegmenterModel(ImageSegmenterModel):
    """A ``crackops export`` graph run by onnxruntime; the MLmodel's ``model_config`` names its precision."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = Path(context.artifacts["export"]).parent
        precision = (context.model_config or {}).get("precision", "fp32")
        self.segmenter, self.params = load_export(folder, precision)


def log_onnx_model(export_dir: Path, precision: str, client: mlflow.MlflowClient, run_id: str,
                   artifact_path: str) -> str:
    """Write the ``precision`` graph of a ``crackops export`` folder into run ``run_id``'s artifacts
    as an MLflow model; returns its ``runs:/`` URI (``mlflow models serve -m`` takes it).

    Written through the client into the run's artifacts, so the run (a registered version's,
    finished long ago) keeps its status and end time.
    """
    export_dir = Path(export_dir)
    described = read_export(export_dir)
    with tempfile.TemporaryDirectory(prefix="crackops-onnx-") as tmp:
        code, model_code = model_code_files(Path(tmp), OnnxCrackSegmenterModel)
        model_dir = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=str(model_code),
            artifacts={"onnx": str(export_dir / ONNX_FILES[precision]), "export": str(export_dir / EXPORT_FILE),
                       "params": str(export_dir / EXPORT_PARAMS_FILE)},
            code_paths=[str(code)],
            signature=model_signature(float(described["threshold"])),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
            model_config={"precision": precision},
            metadata={"format": "onnx", "precision": precision, "model": described.get("model"),
                      "img_size": described["input"]["shape"][-1]},
        )
        client.log_artifacts(run_id, str(model_dir), artifact_path)
    return f"runs:/{run_id}/{artifact_path}"
