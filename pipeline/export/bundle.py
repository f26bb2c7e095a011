"""An export folder: the ONNX files, the source model's ``params.yaml`` and ``export.json`` describing them.

Reading one back (:func:`load_export`) needs onnxruntime, numpy and OpenCV only, not torch: what
an edge box without PyTorch runs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError
from pipeline.inference.onnx_segmenter import OnnxSegmenter
from pipeline.params import Params, load_model_params

EXPORT_FILE = "export.json"
PARAMS_FILE = "params.yaml"
# precision -> file name in the export folder
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
PRECISIONS: tuple[str, ...] = tuple(ONNX_FILES)


def file_entry(path: Path) -> dict[str, Any]:
    """Name, size and SHA-256 of one exported file, so a copy on a device can be checked."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def is_export_dir(directory: Path) -> bool:
    return (Path(directory) / EXPORT_FILE).is_file()


def read_export(directory: Path) -> dict[str, Any]:
    """``export.json`` of ``directory``; a CheckpointError names what is missing or broken."""
    path = Path(directory) / EXPORT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {directory} is not a `crackops export` folder")
    try:
        described = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(described, dict) or not isinstance(described.get("files"), dict):
        raise CheckpointError(f"{path} lists no exported files: not a `crackops export` description")
    return described


def load_export(directory: Path, precision: str = "fp32", threads: int | None = None) -> tuple[OnnxSegmenter, Params]:
    """The exported graph of ``precision`` (fp32 or int8) and the params of the model it came from."""
    directory = Path(directory)
    described = read_export(directory)
    entry = described["files"].get(precision)
    if entry is None:
        exported = ", ".join(sorted(described["files"])) or "none"
        hint = " (export again with --int8)" if precision == "int8" else ""
        raise CheckpointError(f"{directory} holds no {precision} model (exported: {exported}){hint}")
    onnx_file = directory / entry["file"]
    if not onnx_file.is_file() or onnx_file.stat().st_size != entry["bytes"]:
        raise CheckpointError(f"{onnx_file} is missing or not the file {EXPORT_FILE} describes "
                              f"({entry['bytes']} bytes expected)")
    params_file = directory / PARAMS_FILE
    if not params_file.is_file():
        raise CheckpointError(f"{params_file} not found: an export folder keeps its model's params")
    return OnnxSegmenter(onnx_file, threads), load_model_params(params_file)
