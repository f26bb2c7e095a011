"""The frozen SAM teacher and its fingerprint (what the stored embeddings depend on)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from segment_anything.modeling import Sam
from torch import nn

from pipeline.distill.images import file_sha256
from pipeline.errors import CheckpointError
from pipeline.models.sam_builder import build_sam
from pipeline.models.sam_checkpoint import load_sam_checkpoint, missing_checkpoint_message
from pipeline.models.sam_lite.model import teacher_img_size
from pipeline.params import Params

# Bumped when the way images reach the teacher changes, so old embeddings are not reused.
PREPROCESS_VERSION = "square-resize-v1"


@dataclass(frozen=True)
class TeacherSpec:
    variant: str
    checkpoint: str | None
    checkpoint_sha256: str | None  # the file's content, not its path: a replaced file is a new teacher
    img_size: int

    @property
    def fingerprint(self) -> str:
        identity = {"variant": self.variant, "checkpoint_sha256": self.checkpoint_sha256,
                    "img_size": self.img_size, "preprocess": PREPROCESS_VERSION}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def as_dict(self) -> dict:
        return {**asdict(self), "fingerprint": self.fingerprint}


def teacher_spec(params: Params) -> TeacherSpec:
    """The teacher ``distill.*`` describes; hashes the checkpoint file (once per embed run)."""
    distill = params.distill
    checkpoint_sha = None
    if distill.teacher_checkpoint:
        path = Path(distill.teacher_checkpoint)
        if not path.is_file():
            raise CheckpointError("distill.teacher_checkpoint: " + missing_checkpoint_message(path, distill.teacher_variant))
        checkpoint_sha = file_sha256(path)
    return TeacherSpec(distill.teacher_variant, distill.teacher_checkpoint, checkpoint_sha, teacher_img_size(params))


class SamTeacher(nn.Module):
    """SAM's image encoder alone: images (B, 3, S, S) in [0, 1] -> embeddings (B, 256, S/16, S/16)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.pixel_mean, self.pixel_std = sam.pixel_mean, sam.pixel_std
        self.encoder = sam.image_encoder  # prompt encoder and mask decoder are not needed

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder((images * 255.0 - self.pixel_mean) / self.pixel_std)


def build_teacher(spec: TeacherSpec) -> SamTeacher:
    """The frozen teacher in eval mode, with the official checkpoint loaded when one is given.

    Without a checkpoint the teacher is randomly initialised (seeded): only good for running the
    pipeline end to end on a CPU, not for a useful student.
    """
    torch.manual_seed(0)
    sam = build_sam(spec.variant, spec.img_size)
    if spec.checkpoint:
        load_sam_checkpoint(sam, spec.checkpoint, spec.variant)
    teacher = SamTeacher(sam).eval()
    teacher.requires_grad_(False)
    return teacher
