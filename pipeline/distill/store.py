"""Teacher embeddings on disk: safetensors shards plus ``index.json``.

Each shard holds up to ``distill.shard_size`` embeddings (float16, keyed by image key) and records
in its metadata the teacher fingerprint and each image's SHA-256, so an embedding can be reused
whenever the same teacher saw the same image bytes, whatever the index says.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import CrackopsError

INDEX_FILE = "index.json"
SHARD_PATTERN = "shard-{:05d}.safetensors"
FORMAT = 1
STORED_DTYPE = torch.float16  # halves the disk; SAM embeddings are O(1), well inside fp16's range
SKIPPED_REASON = "model.family is not sam_lite"


class EmbeddingStoreError(CrackopsError):
    """The stored embeddings are missing, a placeholder, or stale."""


@dataclass(frozen=True)
class StoredEmbedding:
    shard: Path
    key: str


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def write_shard(path: Path, embeddings: dict[str, torch.Tensor], fingerprint: str, shas: dict[str, str]) -> None:
    """One shard, written atomically; ``shas`` maps each key to its image's SHA-256."""
    tensors = {key: value.detach().to("cpu", STORED_DTYPE).contiguous() for key, value in embeddings.items()}
    metadata = {"teacher_fingerprint": fingerprint, "image_sha256": json.dumps(shas, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def scan_reusable(folder: Path) -> dict[tuple[str, str], StoredEmbedding]:
    """``(teacher fingerprint, image sha256) -> where it is stored`` for every readable shard."""
    found: dict[tuple[str, str], StoredEmbedding] = {}
    if not folder.is_dir():
        return found
    for shard in sorted(folder.glob("shard-*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                metadata = handle.metadata() or {}
                keys = set(handle.keys())
            fingerprint = metadata["teacher_fingerprint"]
            shas = json.loads(metadata["image_sha256"])
        except Exception:  # noqa: BLE001 - a damaged or foreign shard is simply not reused
            continue
        for key, sha in shas.items():
            if key in keys:
                found.setdefault((fingerprint, sha), StoredEmbedding(shard, key))
    return found


def read_embedding(stored: StoredEmbedding) -> torch.Tensor:
    with safe_open(str(stored.shard), framework="pt") as handle:
        return handle.get_tensor(stored.key)


def read_index(folder: Path) -> dict[str, Any] | None:
    path = folder / INDEX_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_index(folder: Path, index: dict[str, Any]) -> None:
    write_json(folder / INDEX_FILE, index)


def skipped_index() -> dict[str, Any]:
    # Fixed content: a SAM or DeepLabV3 pipeline sees the same output whatever else changed.
    return {"format": FORMAT, "skipped": SKIPPED_REASON}


def load_active_index(folder: Path) -> dict[str, Any]:
    """The index of a completed embed run for sam_lite; errors say what to run."""
    index = read_index(folder)
    hint = "run `crackops embed -S model.family=sam_lite` first"
    if index is None:
        raise EmbeddingStoreError(f"no teacher embeddings at {folder} ({INDEX_FILE} missing): {hint}")
    if index.get("skipped"):
        raise EmbeddingStoreError(f"{folder} holds a placeholder ({index['skipped']}), not embeddings: {hint}")
    if index.get("format") != FORMAT:
        raise EmbeddingStoreError(f"{folder / INDEX_FILE} has format {index.get('format')}, expected {FORMAT}: {hint}")
    return index


class ShardReader:
    """Reads embeddings by (shard, key), keeping each shard open once (safetensors maps lazily)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handles: dict[str, Any] = {}

    def get(self, shard: str, key: str) -> torch.Tensor:
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(self.folder / shard), framework="pt")
        return handle.get_tensor(key).float()

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers re-open the shards themselves; open handles do not pickle.
        return {"folder": self.folder, "_handles": {}}
