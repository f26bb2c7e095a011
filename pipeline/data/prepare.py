"""Prepare a dataset folder for training: validate, split, resize, and record a manifest.

The output folder holds ``{train,val,test}/{images,masks}/{stem}.png`` at ``img_size`` x
``img_size`` (masks 0/255) and ``manifest.json`` with the split, statistics and a SHA-256 per
file, so a run can record exactly which data it saw. It is built in a temporary folder and
renamed into place, so an interrupted prepare never leaves a half-written dataset.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_json
from pipeline.data.folder import SPLITS, SamplePair, check_dataset, read_image, read_mask
from pipeline.data.split import carve_split, split_pairs
from pipeline.errors import DatasetError

MANIFEST = "manifest.json"


def _assign_splits(
    found: dict[str | None, list[SamplePair]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[SamplePair]]:
    """Use the dataset's own split when it has one; carve missing val/test out of train."""
    if None in found:
        return split_pairs(found[None], val_fraction, test_fraction, seed)
    splits = {name: found[name] for name in SPLITS if name in found}
    missing = [name for name in ("val", "test") if name not in splits]
    if len(missing) == 2:
        return split_pairs(splits["train"], val_fraction, test_fraction, seed)
    if missing:
        name = missing[0]
        total = sum(len(p) for p in splits.values())
        fraction = val_fraction if name == "val" else test_fraction
        splits[name], splits["train"] = carve_split(splits["train"], max(1, round(total * fraction)), seed)
    return {name: splits[name] for name in SPLITS}


def _encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def prepare_dataset(
    source: Path,
    out_dir: Path,
    img_size: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_only: bool = False,
) -> dict[str, Any]:
    """Validate ``source``, split it, write resized PNGs and ``manifest.json`` to ``out_dir``.

    ``test_only`` puts every pair into ``test/``: evaluation-only sets such as zero-shot domains.
    """
    source, out_dir = Path(source), Path(out_dir)
    if img_size < 1:
        raise ValueError(f"img_size must be >= 1, got {img_size}")
    src, dst = source.resolve(), out_dir.resolve()
    if dst == src or dst in src.parents or src in dst.parents:
        # out_dir replaces itself wholesale: overlapping it with the source would destroy the source.
        raise ValueError(f"out_dir {out_dir} must not overlap the source folder {source}")

    found, report = check_dataset(source)  # every pairing and content problem in one error
    if test_only:
        splits = {"test": sorted((p for pairs in found.values() for p in pairs), key=lambda p: p.stem)}
    else:
        splits = _assign_splits(found, val_fraction, test_fraction, seed)
    for name, pairs in splits.items():
        if not pairs:
            raise DatasetError(f"split {name!r} of {source} is empty")

    files: dict[str, str] = {}
    crack_fraction: dict[str, float] = {}
    size = (img_size, img_size)
    total = sum(len(p) for p in splits.values())
    with atomic_dir(out_dir) as tmp, tqdm(total=total, desc="prepare", unit="pair", disable=None) as bar:
        for name, pairs in splits.items():
            (tmp / name / "images").mkdir(parents=True)
            (tmp / name / "masks").mkdir(parents=True)
            crack_pixels = 0
            for pair in pairs:
                # INTER_AREA averages when shrinking (no aliasing of thin cracks); nearest keeps masks binary.
                image = cv2.resize(read_image(pair.image), size, interpolation=cv2.INTER_AREA)
                mask = cv2.resize(read_mask(pair.mask), size, interpolation=cv2.INTER_NEAREST)
                crack_pixels += int(mask.sum())
                for kind, array in (("images", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), ("masks", mask * 255)):
                    rel = f"{name}/{kind}/{pair.stem}.png"
                    data = _encode_png(array)
                    (tmp / rel).write_bytes(data)
                    files[rel] = hashlib.sha256(data).hexdigest()
                bar.update()
            crack_fraction[name] = round(crack_pixels / (len(pairs) * img_size * img_size), 6)

        manifest: dict[str, Any] = {
            "source": str(source),
            "img_size": img_size,
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "presplit": None not in found,
            "splits": {name: [p.stem for p in pairs] for name, pairs in splits.items()},
            "counts": {name: len(pairs) for name, pairs in splits.items()},
            "crack_pixel_fraction": crack_fraction,
            "n_thresholded_masks": report.n_thresholded,
            "n_crack_free_masks": report.n_crack_free,
            "files": files,
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def load_manifest(prepared_dir: Path) -> dict[str, Any]:
    """Read ``prepared_dir/manifest.json``; DatasetError says how to fix a missing or bad one."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"no prepared dataset at {prepared_dir} ({MANIFEST} not found): run `crackops prepare` first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} is unreadable ({err}): run `crackops prepare` again") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise DatasetError(f"{path} is not a prepare manifest (no 'splits' table): run `crackops prepare` again")
    return manifest
