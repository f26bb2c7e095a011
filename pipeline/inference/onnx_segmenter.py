"""An exported ONNX crack segmenter run by onnxruntime: the :class:`Segmenter` of ``crackops export``'s files.

The graph takes what a crackops PyTorch model takes, ``image`` (N, 3, S, S) float32 RGB in [0, 1]
(normalisation is inside), and returns ``probability`` (N, 1, S, S): the sigmoid is folded in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import CheckpointError
from pipeline.inference.probabilities import pixels_to_input

INPUT_NAME, OUTPUT_NAME = "image", "probability"


class OnnxSegmenter:
    """One onnxruntime session on the CPU; ``threads`` None lets onnxruntime pick (one per core)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise CheckpointError(f"cannot load ONNX model {path}: {str(error).splitlines()[0]}") from None
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise CheckpointError(f"{path} is not a crackops export: inputs/outputs {names}, "
                                  f"expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]")
        self.path = Path(path)
        batch = self.session.get_inputs()[0].shape[0]
        # crackops exports one image per run (a fixed batch of 1); a graph with a free batch takes many.
        self.batch = batch if isinstance(batch, int) else None

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The graph on model input, (N, 3, S, S) float32 in [0, 1] -> (N, 1, S, S) probabilities."""
        if self.batch is None or len(inputs) == self.batch:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
        return np.concatenate([self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs[start:start + self.batch]})[0]
                               for start in range(0, len(inputs), self.batch)])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.run(pixels_to_input(images))[:, 0]
