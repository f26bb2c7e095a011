"""INT8 post-training quantisation of an exported graph with onnxruntime's quantisation tools.

Two methods, and ``auto`` to pick between them by where the graph's weights are:

- ``static`` calibrates activation ranges on images from the prepared training split and writes
  QDQ pairs that onnxruntime fuses into integer convolutions and matrix products. It suits
  convolutional networks (DeepLabV3: 4-7x eager PyTorch), whose integer convolutions chain.
- ``dynamic`` quantises the matrix products (``MatMul``/``Gemm``: attention projections and MLPs)
  with int8 weights and activation ranges measured at run time, and stores every other large
  weight (convolutions, attention-bias tables) as int8 that becomes float again when the session
  loads. It suits transformers (SAM, sam_lite), whose activations pass through GELU, LayerNorm and
  softmax in float between the matrix products: static QDQ converts every such tensor there and
  back, which cost sam_lite all of its integer speed-up (benchmarks/edge_export.py).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from pipeline.inference.onnx_segmenter import INPUT_NAME
from pipeline.inference.probabilities import pixels_to_input

QuantMethod = Literal["auto", "static", "dynamic"]
QUANT_METHODS: tuple[str, ...] = ("auto", "static", "dynamic")
MATRIX_PRODUCTS = ("MatMul", "Gemm")
CONVOLUTIONS = ("Conv", "ConvTranspose")
# Smaller float tensors (biases, norms, scales) stay float: int8 would save little and cost precision.
MIN_STORED_INT8 = 1024


class _Calibration:
    """onnxruntime's CalibrationDataReader over uint8 images, one model input at a time."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self._images: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._images, None)
        return None if image is None else {INPUT_NAME: pixels_to_input(image[None])}


def weights_by_operator(fp32: Path) -> dict[str, int]:
    """Float weights (element counts) feeding matrix products and convolutions in the graph at ``fp32``."""
    import onnx

    # Shapes only: a graph with its weights in a .data file beside it (SAM ViT-H) is not read whole.
    model = onnx.load(str(fp32), load_external_data=False)
    sizes = {tensor.name: int(np.prod(tensor.dims)) for tensor in model.graph.initializer}
    counts = {"matrix_products": 0, "convolutions": 0}
    for node in model.graph.node:
        kind = ("matrix_products" if node.op_type in MATRIX_PRODUCTS
                else "convolutions" if node.op_type in CONVOLUTIONS else None)
        if kind and len(node.input) > 1:
            counts[kind] += sizes.get(node.input[1], 0)
    return counts


def resolve_method(fp32: Path, method: QuantMethod) -> Literal["static", "dynamic"]:
    """``auto``: dynamic when most weights are in matrix products (a transformer), else static."""
    if method not in QUANT_METHODS:
        raise ValueError(f"unknown INT8 method {method!r}; choose from {', '.join(QUANT_METHODS)}")
    if method != "auto":
        return method
    counts = weights_by_operator(fp32)
    return "dynamic" if counts["matrix_products"] >= counts["convolutions"] else "static"


def store_weights_int8(model: "onnx.ModelProto") -> int:  # noqa: F821 - onnx is imported where used
    """Store each large float initializer as int8 (symmetric, one scale per row of its first axis)
    rebuilt by ``Cast`` and ``Mul``; returns how many. Not ``DequantizeLinear``: onnxruntime keeps
    those for its QDQ fusions and would dequantize every run, losing the convolutions' pre-packed
    weights (measured: sam_lite 1.26x faster than FP32 became 1.04x); ``Cast`` and ``Mul`` of
    constants are folded into the float weight when the session loads."""
    from onnx import helper, numpy_helper

    graph = model.graph
    # Already quantised weights stay; so do initializers that are also graph inputs (a caller may
    # override them, and a node output cannot share a graph input's name).
    skipped = {name for node in graph.node
               if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
               for name in node.input} | {value.name for value in graph.input}
    rebuilt, kept = [], []
    for tensor in graph.initializer:
        weight = numpy_helper.to_array(tensor)
        if (weight.dtype != np.float32 or weight.ndim < 2 or weight.size < MIN_STORED_INT8
                or tensor.name in skipped):
            kept.append(tensor)
            continue
        rows = weight.reshape(weight.shape[0], -1)
        scale = np.abs(rows).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        values = np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8).reshape(weight.shape)
        name = tensor.name
        kept += [numpy_helper.from_array(values, f"{name}_int8"),
                 numpy_helper.from_array(scale.astype(np.float32).reshape((-1,) + (1,) * (weight.ndim - 1)),
                                         f"{name}_int8_scale")]
        rebuilt += [helper.make_node("Cast", [f"{name}_int8"], [f"{name}_float"], name=f"{name}_cast", to=1),
                    helper.make_node("Mul", [f"{name}_float", f"{name}_int8_scale"], [name], name=f"{name}_rescale")]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(rebuilt + nodes)  # before their consumers: the graph stays topologically sorted
    return len(rebuilt) // 2


def quantize_int8(fp32: Path, out: Path, method: QuantMethod, calibration: list[np.ndarray]) -> dict:
    """Write the INT8 copy of ``fp32`` to ``out``; returns its settings for ``export.json``.

    ``calibration``: (S, S, 3) uint8 RGB images at the model's input size (static only).
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = resolve_method(fp32, method)
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
                products = Path(tmp) / "products.onnx"
                quantize_dynamic(str(prepared), str(products), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=list(MATRIX_PRODUCTS))
                model = onnx.load(str(products))
                stored = store_weights_int8(model)
                onnx.save(model, str(out))
                return {"method": "dynamic", "matrix_products": "int8 weights per channel, uint8 activations "
                        "quantised at run time", "other_weights": f"{stored} tensors stored int8 per row, float "
                        "once loaded", "activations_elsewhere": "float"}
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
