"""A crackops PyTorch model traced into an ONNX graph with torch's exporter (``torch.export`` + onnxscript)."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import CrackopsError
from pipeline.inference.onnx_segmenter import INPUT_NAME, OUTPUT_NAME

OPSET = 18
# One image per run: SAM's decoder loops over the batch in Python, which a traced graph cannot
# keep variable, and a phone or an edge box segments one photo at a time anyway.
EXPORT_BATCH = 1
# Protobuf's limit on one file; larger graphs (SAM ViT-H) keep their weights in `<name>.data` beside it.
SINGLE_FILE_LIMIT = 1_800_000_000


class ExportError(CrackopsError):
    """The model (or one of its operators) cannot be exported; the message names what."""


class ProbabilityGraph(nn.Module):
    """What is exported: the model's logits through a sigmoid, so the graph returns probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image).float())


def merged_for_export(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every peft LoRA layer merged into its base layer and unwrapped.

    The exported graph then has SAM's own linear layers, no LoRA branch; adapters are ordinary
    modules and stay as they are.
    """
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(model).eval()
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    return merged


def _unsupported_operator(error: BaseException) -> str | None:
    """The operator torch's exporter found no ONNX function for, from anywhere in the error chain."""
    seen: BaseException | None = error
    while seen is not None:
        found = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", str(seen))
        if found:
            return found.group(1)
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def export_onnx(model: nn.Module, img_size: int, path: Path, label: str) -> None:
    """Write ``model`` (images in [0, 1] -> logits) to ``path`` as an ONNX graph of probabilities.

    The input is ``image`` (1, 3, ``img_size``, ``img_size``) float32 RGB, the output
    ``probability`` (1, 1, ``img_size``, ``img_size``). ``label`` names the model in errors.
    """
    graph = ProbabilityGraph(merged_for_export(model)).eval()
    example = torch.rand(EXPORT_BATCH, 3, img_size, img_size)
    # The exporter narrates each step on stdout and warns about internals; the error is what matters.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(graph, (example,), None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=True,
                                        optimize=True, verbose=False)
        except Exception as error:
            operator = _unsupported_operator(error)
            if operator:
                raise ExportError(f"cannot export {label} to ONNX: operator {operator} has no ONNX "
                                  f"function in torch {torch.__version__}'s exporter") from None
            raise ExportError(f"cannot export {label} to ONNX: {_first_line(error)}") from None
    weight_bytes = sum(t.numel() * t.element_size() for t in graph.state_dict().values())
    program.save(str(path), external_data=weight_bytes > SINGLE_FILE_LIMIT)
    if weight_bytes <= SINGLE_FILE_LIMIT:
        optimize_for_onnxruntime(path)


def optimize_for_onnxruntime(path: Path) -> None:
    """Fold constants and fuse GELU patterns into onnxruntime's Gelu kernel, in place.

    Two passes: onnxruntime's basic level (constant folding: TinyViT's attention-bias index
    tables, 2 MB of int64, become the gathered biases) and its transformer optimizer's fusions
    (the exporter writes GELU as Div-Erf-Add-Mul-Mul, about a quarter of sam_lite's time).
    """
    import onnxruntime as ort
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    path = Path(path)
    folded = path.with_name(path.stem + ".folded.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # provider-independent
    options.optimized_model_filepath = str(folded)
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        fusions = FusionOptions("vit")
        # GELU only. Its LayerNorm fusion takes SAM's LayerNorm2d (over channels) for one over the
        # last axis, which moved SAM's probabilities by 1e-2 (tests/test_export.py); the exporter
        # already writes nn.LayerNorm as LayerNormalization; SAM's and TinyViT's attention have
        # relative-position terms the attention fusion does not know.
        for name in ("enable_attention", "enable_layer_norm", "enable_skip_layer_norm", "enable_bias_skip_layer_norm",
                     "enable_embed_layer_norm", "enable_rotary_embeddings", "enable_qordered_matmul"):
            setattr(fusions, name, False)
        logger = logging.getLogger("onnxruntime.transformers")
        level = logger.level
        logger.setLevel(logging.ERROR)  # its advice to specify num_heads: not needed without attention fusion
        try:
            fused = optimize_model(str(folded), model_type="vit", num_heads=0, hidden_size=0, opt_level=0,
                                   optimization_options=fusions)
        finally:
            logger.setLevel(level)
        fused.save_model_to_file(str(path))
    finally:
        folded.unlink(missing_ok=True)
