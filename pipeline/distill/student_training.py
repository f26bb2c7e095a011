"""``crackops distill``: train the TinyViT student with MSE against the stored teacher embeddings."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pipeline.atomic import atomic_path, write_json
from pipeline.distill.embed import embeddings_dir
from pipeline.distill.images import file_sha256, load_resized
from pipeline.distill.store import SKIPPED_REASON, EmbeddingStoreError, ShardReader, load_active_index
from pipeline.models.sam_lite.model import PLACEHOLDER_KEY, STRIDE_KEY, build_student, embedding_grid
from pipeline.models.sam_lite.student import TIMM_MODEL
from pipeline.params import Params
from pipeline.training.precision import pick_device
from pipeline.training.schedules import lr_factor
from pipeline.training.seeding import seed_everything

STUDENT_FILE = "student.safetensors"
METRICS_FILE = "metrics.json"


@dataclass
class DistillReport:
    student_path: Path
    skipped: bool = False
    images: int = 0
    history: list[float] = field(default_factory=list)  # mean MSE per epoch
    seconds: float = 0.0

    @property
    def final_mse(self) -> float | None:
        return self.history[-1] if self.history else None


class EmbeddingPairs(Dataset):
    """(image at the student's size, stored teacher embedding as float32) per index entry."""

    def __init__(self, entries: list[dict], folder: Path, img_size: int) -> None:
        self.entries, self.img_size = entries, img_size
        self.reader = ShardReader(folder)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.entries[index]
        return load_resized(Path(entry["path"]), self.img_size), self.reader.get(entry["shard"], entry["key"])


def student_path(params: Params) -> Path:
    return Path(params.distill.out_dir) / STUDENT_FILE


def _write_placeholder(params: Params) -> DistillReport:
    # Fixed bytes: the train stage, which depends on this file, does not rerun for SAM or DeepLabV3.
    path = student_path(params)
    with atomic_path(path) as tmp:
        save_file({}, str(tmp), metadata={PLACEHOLDER_KEY: SKIPPED_REASON})
    write_json(path.parent / METRICS_FILE, {"skipped": SKIPPED_REASON})
    return DistillReport(path, skipped=True)


def _check_current(index: dict, params: Params) -> None:
    """The embeddings must be for this student's grid and for the images as they are now."""
    grid = embedding_grid(params)
    if index["embedding_shape"][-1] != grid:
        raise EmbeddingStoreError(f"stored embeddings are {index['embedding_shape'][-1]}x{index['embedding_shape'][-1]} "
                                  f"but the teacher grid for these params is {grid}x{grid}: run `crackops embed` again")
    changed = [e["key"] for e in index["entries"] if not Path(e["path"]).is_file() or file_sha256(Path(e["path"])) != e["sha256"]]
    if changed:
        raise EmbeddingStoreError(f"{len(changed)} distillation images changed or vanished since `crackops embed` "
                                  f"(e.g. {', '.join(changed[:5])}): run `crackops embed` again")


def distill_from_params(params: Params, progress: bool = True) -> DistillReport:
    """Train the student on the stored embeddings and write ``student.safetensors`` + ``metrics.json``."""
    if params.model.family != "sam_lite":
        return _write_placeholder(params)
    distill = params.distill
    folder = embeddings_dir(params)
    index = load_active_index(folder)
    _check_current(index, params)
    seed_everything(distill.seed)
    device = pick_device()
    student = build_student(params).to(device).train()
    dataset = EmbeddingPairs(index["entries"], folder, params.data.img_size)
    loader = DataLoader(dataset, batch_size=distill.batch_size, shuffle=True, num_workers=params.data.num_workers,
                        generator=torch.Generator().manual_seed(distill.seed))
    optimizer = torch.optim.AdamW(student.parameters(), lr=distill.lr, weight_decay=distill.weight_decay)
    total = distill.epochs * len(loader)
    # The training stage's cosine schedule (no warm-up), per iteration.
    schedule = LambdaLR(optimizer, lambda step: lr_factor(step, total, "cosine", warmup=0, power=1.0))
    history: list[float] = []
    started = time.perf_counter()
    for epoch in range(distill.epochs):
        loss_sum, seen = 0.0, 0
        for images, targets in tqdm(loader, desc=f"distill {epoch + 1}/{distill.epochs}", leave=False,
                                    disable=not progress):
            images, targets = images.to(device), targets.to(device)
            loss = F.mse_loss(student(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
        history.append(loss_sum / max(seen, 1))
        print(f"distill epoch {epoch + 1}/{distill.epochs}: embedding MSE {history[-1]:.5f}", flush=True)
    seconds = time.perf_counter() - started

    path = student_path(params)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in student.state_dict().items()}
    # The stride is recorded because the weights fit either one (see load_student_weights).
    metadata = {"timm_model": TIMM_MODEL, "img_size": str(params.data.img_size), STRIDE_KEY: str(student.stride),
                "native_grid": str(student.native_grid), "embedding_grid": str(embedding_grid(params)),
                "teacher": json.dumps(index["teacher"], sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    write_json(path.parent / METRICS_FILE, {
        "mse": history[-1], "history": history, "epochs": distill.epochs, "images": len(dataset),
        "seconds": round(seconds, 2), "teacher": index["teacher"],
    })
    return DistillReport(path, images=len(dataset), history=history, seconds=seconds)
