"""``crackops embed``: the teacher's image embeddings, computed once and reused while valid."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.atomic import atomic_dir
from pipeline.distill.images import DistillImage, distill_image_set, image_folder, load_resized
from pipeline.distill.store import (
    FORMAT,
    INDEX_FILE,
    STORED_DTYPE,
    read_embedding,
    read_index,
    scan_reusable,
    shard_name,
    skipped_index,
    write_index,
    write_shard,
)
from pipeline.distill.teacher import TeacherSpec, build_teacher, teacher_spec
from pipeline.models.sam_lite.student import EMBED_CHANNELS, SAM_PATCH
from pipeline.params import Params
from pipeline.training.precision import pick_device

EMBEDDINGS_DIR = "embeddings"


@dataclass
class EmbedReport:
    folder: Path
    skipped: bool = False
    computed: int = 0  # images the teacher ran on
    reused: int = 0  # embeddings taken from earlier runs
    written: bool = False  # whether anything on disk changed
    teacher: dict = field(default_factory=dict)


def embeddings_dir(params: Params) -> Path:
    return Path(params.distill.out_dir) / EMBEDDINGS_DIR


def _entries(images: list[DistillImage], shard_size: int) -> list[dict]:
    return [{"key": image.key, "path": str(image.path), "sha256": image.sha256, "shard": shard_name(i // shard_size)}
            for i, image in enumerate(images)]


def _build_index(params: Params, spec: TeacherSpec, images: list[DistillImage]) -> dict:
    grid = spec.img_size // SAM_PATCH
    return {
        "format": FORMAT,
        "teacher": spec.as_dict(),
        "image_folder": str(image_folder(params)),
        "embedding_shape": [EMBED_CHANNELS, grid, grid],
        "dtype": str(STORED_DTYPE).removeprefix("torch."),
        "shard_size": params.distill.shard_size,
        "count": len(images),
        "entries": _entries(images, params.distill.shard_size),
    }


def _up_to_date(folder: Path, index: dict) -> bool:
    current = read_index(folder)
    if current != index:
        return False
    return all((folder / shard).is_file() for shard in {entry["shard"] for entry in index["entries"]})


def _batches(items: list[DistillImage], size: int) -> list[list[DistillImage]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def embed_from_params(params: Params, progress: bool = True) -> EmbedReport:
    """Store the teacher's embeddings of the distillation images under ``distill.out_dir/embeddings``.

    Nothing is recomputed (or rewritten) while the teacher (variant, checkpoint file content,
    input size) and the image bytes are unchanged; a changed teacher recomputes everything, a
    changed image set only the images whose bytes are new. With ``model.family`` other than
    ``sam_lite`` only a fixed placeholder index is written and no teacher is built.
    """
    folder = embeddings_dir(params)
    if params.model.family != "sam_lite":
        if read_index(folder) != skipped_index():
            folder.mkdir(parents=True, exist_ok=True)
            write_index(folder, skipped_index())
        return EmbedReport(folder, skipped=True)

    spec = teacher_spec(params)
    images = distill_image_set(params)
    index = _build_index(params, spec, images)
    if _up_to_date(folder, index):
        return EmbedReport(folder, reused=len(images), teacher=index["teacher"])

    fingerprint = spec.fingerprint
    reusable = scan_reusable(folder)
    todo = {image.key for image in images if (fingerprint, image.sha256) not in reusable}
    device = pick_device()
    teacher = build_teacher(spec).to(device) if todo else None  # built only when something is missing
    shard_size, batch_size = params.distill.shard_size, params.distill.batch_size
    bar = tqdm(total=len(todo), desc="embed", unit="image", disable=not progress or not todo)
    # Old shards stay readable until the new folder replaces them in one rename.
    with atomic_dir(folder) as tmp:
        for number, chunk in enumerate(_batches(images, shard_size)):
            embeddings: dict[str, torch.Tensor] = {}
            for image in chunk:
                if image.key not in todo:
                    embeddings[image.key] = read_embedding(reusable[(fingerprint, image.sha256)])
            for batch in _batches([image for image in chunk if image.key in todo], batch_size):
                pixels = torch.stack([load_resized(image.path, spec.img_size) for image in batch]).to(device)
                for image, embedding in zip(batch, teacher(pixels)):
                    embeddings[image.key] = embedding
                bar.update(len(batch))
            ordered = {image.key: embeddings[image.key] for image in chunk}
            write_shard(tmp / shard_name(number), ordered, fingerprint, {image.key: image.sha256 for image in chunk})
        write_index(tmp, index)
    bar.close()
    return EmbedReport(folder, computed=len(todo), reused=len(images) - len(todo), written=True,
                       teacher=index["teacher"])


__all__ = ["EMBEDDINGS_DIR", "INDEX_FILE", "EmbedReport", "embed_from_params", "embeddings_dir"]
