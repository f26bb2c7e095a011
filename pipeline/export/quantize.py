"""INT8 post-training quantisation of an exported graph with onnxruntime's quantisation tools.

``static`` (the default) calibrates activation ranges on images from the prepared training split
and writes QDQ pairs that onnxruntime fuses into integer convolutions and matrix products;
``dynamic`` quantises the weights only and measures activation ranges at run time (no
calibration set, but on this project's convolutional models slower than FP32).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from pipeline.inference.onnx_segmenter import INPUT_NAME
from pipeline.inference.probabilities import pixels_to_input

QuantMethod = Literal["static", "dynamic"]
QUANT_METHODS: tuple[str, ...] = ("static", "dynamic")


class _Calibration:
    """onnxruntime's CalibrationDataReader over uint8 images, one model input at a time."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self._images: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._images, None)
        return None if image is None else {INPUT_NAME: pixels_to_input(image[None])}


def quantize_int8(fp32: Path, out: Path, method: QuantMethod, calibration: list[np.ndarray]) -> dict:
    """Write the INT8 copy of ``fp32`` to ``out``; returns its settings for ``export.json``.

    ``calibration``: (S, S, 3) uint8 RGB images at the model's input size (static only).
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in QUANT_METHODS:
        raise ValueError(f"unknown INT8 method {method!r}; choose from {', '.join(QUANT_METHODS)}")
    if method == "static" and not calibration:
        raise ValueError("static INT8 quantisation needs calibration images")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's advice to pre-process (done) and its calibration chatter
    try:
        with tempfile.TemporaryDirectory(prefix="crackops-quant-") as tmp:
            # Shapes and a fused graph first: quantisation skips tensors of unknown shape.
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32), str(prepared))
            if method == "dynamic":
                quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
                return {"method": "dynamic", "weights": "int8 per channel", "activations": "uint8, ranges at run time"}
            reader: CalibrationDataReader = _Calibration(calibration)  # type: ignore[assignment]
            # The calibrator holds every activation of every calibration image until it computes the
            # ranges (its CalibMaxIntermediateOutputs option drops them uncounted in onnxruntime 1.32).
            quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
    return {"method": "static", "format": "QDQ", "weights": "int8 per channel", "activations": "uint8",
            "calibration": "MinMax", "calibration_images": len(calibration)}
