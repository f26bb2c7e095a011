"""Student + crack head as one crack segmenter, built from params with the distilled student loaded."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models.frozen_batchnorm import freeze_frozen_batchnorm
from pipeline.models.sam_lite.crack_head import CrackHead
from pipeline.models.sam_lite.student import SAM_PATCH, SamLiteStudent
from pipeline.params import LEGACY_STUDENT_STRIDE, Params

# Metadata key of the stand-in file the distill stage writes when model.family is not sam_lite.
PLACEHOLDER_KEY = "crackops.placeholder"
# Metadata key of a distilled student's output stride. Strides 16 and 32 have the same weights, so
# only this tells them apart; students written before it existed ran at LEGACY_STUDENT_STRIDE.
STRIDE_KEY = "student_stride"
DISTILL_HINT = ("run `crackops embed -S model.family=sam_lite` then `crackops distill -S model.family=sam_lite` "
                "(or `dvc repro` with model.family: sam_lite), or set model.student_checkpoint: null to "
                "start from a random student")


class SamLiteSegmenter(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> crack logits (B, 1, S, S): student embeddings, then the head."""

    def __init__(self, student: SamLiteStudent, head: CrackHead) -> None:
        super().__init__()
        self.student = student
        self.head = head

    @property
    def img_size(self) -> int:
        return self.student.img_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.student(images), tuple(images.shape[-2:]))

    def train(self, mode: bool = True) -> "SamLiteSegmenter":
        super().train(mode)
        if mode:
            freeze_frozen_batchnorm(self)
        return self


def teacher_img_size(params: Params) -> int:
    """The size the SAM teacher saw: ``distill.teacher_img_size``, else ``data.img_size``."""
    return params.distill.teacher_img_size or params.data.img_size


def embedding_grid(params: Params) -> int:
    """Side of the teacher's embedding grid, which the student is trained to reproduce."""
    return teacher_img_size(params) // SAM_PATCH


def build_student(params: Params) -> SamLiteStudent:
    """The student the params describe: ``data.img_size`` in, the teacher's grid out."""
    return SamLiteStudent(params.data.img_size, embedding_grid(params), params.model.student_stride)


def load_student_weights(student: SamLiteStudent, path: str | Path) -> SamLiteStudent:
    """Load a distilled student (``crackops distill`` output); errors say how to produce one.

    The stride recorded with the weights must be the student's: the weights fit either stride, so
    a mismatch would load silently and give embeddings the student was never trained to produce.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"distilled student not found: {path}; {DISTILL_HINT}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as error:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"cannot read distilled student {path}: {error}") from None
    if PLACEHOLDER_KEY in metadata:
        raise CheckpointError(f"{path} is a placeholder ({metadata[PLACEHOLDER_KEY]}), not a distilled student; "
                              f"{DISTILL_HINT}")
    try:
        stride = int(metadata.get(STRIDE_KEY, LEGACY_STUDENT_STRIDE))
    except ValueError:
        raise CheckpointError(f"{path}: metadata {STRIDE_KEY}={metadata[STRIDE_KEY]!r} is not a stride") from None
    if stride != student.stride:
        raise CheckpointError(f"{path} was distilled with model.student_stride {stride}, but the params ask for "
                              f"{student.stride}: set model.student_stride: {stride} or distill again")
    expected = student.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{path} does not fit the sam_lite student: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shape {mismatched[:5]}")
    student.load_state_dict(state)
    return student


def build_sam_lite(params: Params, load_weights: bool = True) -> SamLiteSegmenter:
    """The sam_lite segmenter; ``load_weights`` loads ``model.student_checkpoint`` when set;
    ``tuning.method`` is applied by :mod:`pipeline.tuning.build`, not here."""
    student = build_student(params)
    if load_weights and params.model.student_checkpoint:
        load_student_weights(student, params.model.student_checkpoint)
    return SamLiteSegmenter(student, CrackHead())
