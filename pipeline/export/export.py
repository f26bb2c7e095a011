"""Export a trained model into one folder: FP32 ONNX, optionally INT8, checked against PyTorch.

The folder is written atomically: an export that fails its parity check, hits an operator the
exporter cannot translate, or is killed leaves no folder (or the previous one) behind.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from torch import nn

from pipeline.atomic import atomic_dir, write_json
from pipeline.export.bundle import EXPORT_FILE, ONNX_FILES, PARAMS_FILE, file_entry, is_export_dir
from pipeline.export.checks import FP32_TOLERANCE, load_split, max_probability_gap, pooled_f1
from pipeline.export.onnx_graph import EXPORT_BATCH, OPSET, ExportError, export_onnx
from pipeline.export.quantize import QuantMethod, quantize_int8, resolve_method
from pipeline.inference.onnx_segmenter import INPUT_NAME, OUTPUT_NAME, OnnxSegmenter
from pipeline.inference.probabilities import TorchSegmenter, resize_to_input
from pipeline.models.deeplab import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.factory import model_label
from pipeline.models.sam_lite.student import PIXEL_MEAN, PIXEL_STD
from pipeline.params import Params


@dataclass
class ExportSettings:
    """What to export and how to check it; ``int8_method`` None exports FP32 only."""

    int8_method: QuantMethod | None = None
    parity_images: int = 4
    calibration_images: int = 16


@dataclass
class ExportReport:
    directory: Path
    description: dict[str, Any] = field(default_factory=dict)


def folded_normalisation(params: Params) -> dict[str, Any]:
    """The pixel normalisation inside the graph: ``(x * scale - mean) / std`` per RGB channel."""
    family, norm = params.model.family, params.model.input_norm
    # SAM's pixel statistics (on 0-255 pixels) are the ones the sam_lite student mimics.
    if family == "sam_lite" or (family == "sam" and norm == "family"):
        scale, mean, std = 255.0, PIXEL_MEAN, PIXEL_STD
    elif family == "deeplabv3" and norm == "family":
        scale, mean, std = 1.0, IMAGENET_MEAN, IMAGENET_STD
    else:
        scale, mean, std = 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return {"in_graph": True, "scale": scale, "mean": list(mean), "std": list(std)}


def at_input_size(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Images at the model's input size, resized as predict resizes them (prepared data may differ)."""
    return [resize_to_input(image, size) for image in images]


def evenly_spread(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spread over the list (all when there are fewer): a fixed, varied sample."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("torch", "onnx", "onnxruntime", "onnxscript")}


def export_model(model: nn.Module, params: Params, out_dir: Path, prepared_dir: Path, settings: ExportSettings,
                 source: dict[str, Any], say: Callable[[str], None] = print) -> ExportReport:
    """Export ``model`` (built from its own ``params``) into ``out_dir`` and check it on ``prepared_dir``.

    FP32 must match PyTorch's probabilities within :data:`FP32_TOLERANCE` on ``parity_images``
    test images, else nothing is written. With INT8, the test split's pooled F1 of both graphs is
    measured. ``source`` (model URI, version, run, its metrics) goes into ``export.json`` as given.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not is_export_dir(out_dir) and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # The export replaces the folder whole: never a folder that holds something else.
        raise ExportError(f"{out_dir} exists and is not a `crackops export` folder: choose a new or empty folder")
    if settings.parity_images < 1 or (settings.int8_method in ("static", "auto") and settings.calibration_images < 1):
        raise ExportError("--parity-images and --calibration-images must be at least 1")
    size, threshold, label = params.data.img_size, params.eval.threshold, model_label(params)
    test = load_split(prepared_dir, "test")  # before the slow export: a missing split fails at once
    parity = at_input_size(evenly_spread(test.images, settings.parity_images), size)
    model = model.eval()
    with atomic_dir(out_dir) as tmp:
        say(f"exporting {label} (tuning {params.tuning.method}) to ONNX at {size}x{size} ...")
        fp32_path = tmp / ONNX_FILES["fp32"]
        export_onnx(model, size, fp32_path, label)
        fp32 = OnnxSegmenter(fp32_path)
        reference = TorchSegmenter(model)
        gap = max_probability_gap(reference, fp32, parity)
        say(f"FP32 parity on {len(parity)} test images: max |ONNX - PyTorch| = {gap:.2e} (bound {FP32_TOLERANCE:g})")
        if not gap <= FP32_TOLERANCE:
            raise ExportError(f"the ONNX export of {label} differs from PyTorch by {gap:.2e} (more than "
                              f"{FP32_TOLERANCE:g}) on {len(parity)} test images of {prepared_dir}: not written")
        files = {"fp32": file_entry(fp32_path)}
        checks: dict[str, Any] = {"parity_images": len(parity), "fp32_max_abs_diff": gap}
        accuracy: dict[str, Any] | None = None
        if settings.int8_method:
            method = resolve_method(fp32_path, settings.int8_method)
            calibration = [] if method == "dynamic" else at_input_size(
                evenly_spread(load_split(prepared_dir, "train").images, settings.calibration_images), size)
            say(f"quantising to INT8 ({method}"
                + (f", calibrated on {len(calibration)} training images" if method == "static"
                   else ": matrix products in int8, activation ranges at run time")
                + (", chosen by --int8-method auto" if settings.int8_method == "auto" else "") + ") ...")
            int8_path = tmp / ONNX_FILES["int8"]
            quantization = quantize_int8(fp32_path, int8_path, method, calibration)
            int8 = OnnxSegmenter(int8_path)
            checks["int8_max_abs_diff"] = max_probability_gap(reference, int8, parity)
            files["int8"] = {**file_entry(int8_path), "quantization": quantization}
            say(f"scoring FP32 and INT8 on the {len(test.images)} test images ...")
            f1 = {name: pooled_f1(graph, test, size, threshold) for name, graph in (("fp32", fp32), ("int8", int8))}
            accuracy = {"split": "test", "images": len(test.images), "threshold": threshold,
                        "f1": f1, "int8_f1_change": f1["int8"] - f1["fp32"]}
            say(f"test F1 (pooled, at {threshold:g}): FP32 {f1['fp32']:.4f}, INT8 {f1['int8']:.4f} "
                f"(change {f1['int8'] - f1['fp32']:+.4f}); INT8 max |ONNX - PyTorch| = {checks['int8_max_abs_diff']:.3f}")
        (tmp / PARAMS_FILE).write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
        description = {
            "format": "onnx",
            "model": label,
            "tuning": params.tuning.method,
            "files": files,
            "input": {"name": INPUT_NAME, "shape": [EXPORT_BATCH, 3, size, size], "dtype": "float32",
                      "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0],
                      "preprocessing": f"resize the photo to {size}x{size} (OpenCV INTER_AREA), "
                                       "divide the 8-bit pixels by 255",
                      "normalisation": folded_normalisation(params)},
            "output": {"name": OUTPUT_NAME, "shape": [EXPORT_BATCH, 1, size, size], "dtype": "float32",
                       "meaning": "crack probability per pixel (sigmoid in the graph)",
                       "postprocessing": "resize back to the photo's size (bilinear), crack where >= threshold"},
            "threshold": threshold,
            "source": source,
            "checks": checks,
            "accuracy": accuracy,
            "exporter": {"opset": OPSET, **_versions()},
        }
        write_json(tmp / EXPORT_FILE, description)
    return ExportReport(out_dir, description)
