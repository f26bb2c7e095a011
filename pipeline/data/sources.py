"""Resolve ``data.source`` (``synthetic`` or a dataset folder) into prepared splits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.data.prepare import load_manifest, prepare_dataset
from pipeline.data.synthetic import generate_dataset
from pipeline.errors import DatasetError, ParamsError
from pipeline.params import DataParams, Params

SYNTHETIC_ROOT = Path("data/synthetic")
SYNTHETIC_DOMAIN = "pavement"
ZERO_SHOT_ROOT = Path("data/zero_shot")
SYNTHETIC_ZERO_SHOT = "synthetic-masonry"


def synthetic_dataset(data: DataParams, domain: str, n_images: int, seed_offset: int = 0) -> Path:
    """Generate (or reuse, when the arguments match) a synthetic dataset folder."""
    synthetic = data.synthetic
    folder = SYNTHETIC_ROOT / domain
    spec = {"n_images": n_images, "size": synthetic.size, "seed": synthetic.seed + seed_offset,
            "domain": domain, "crack_free_fraction": synthetic.crack_free_fraction}
    stamp = folder / "generated.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return folder
    generate_dataset(folder, **spec)
    stamp.write_text(json.dumps(spec))
    return folder


def _check_apart(folder: Path, key: str, other: Path, other_key: str) -> None:
    """Preparing replaces the folders it writes wholesale: one overlapping a dataset would destroy it."""
    a, b = folder.resolve(), other.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ParamsError(f"{key} {folder} overlaps {other_key} {other}; preparing replaces the "
                          "folders it writes, so keep the two apart")


def _source_folder(data: DataParams) -> Path:
    return SYNTHETIC_ROOT / SYNTHETIC_DOMAIN if data.source == "synthetic" else Path(data.source)


def resolve_source(data: DataParams) -> Path:
    """The dataset folder behind ``data.source``, generating the synthetic default if needed."""
    folder = _source_folder(data)
    _check_apart(Path(data.prepared_dir), "data.prepared_dir", folder, "data.source")
    if data.source == "synthetic":
        return synthetic_dataset(data, SYNTHETIC_DOMAIN, data.synthetic.n_images)
    if not folder.exists():
        raise DatasetError(f"data.source: dataset folder {folder} does not exist "
                           "(use 'synthetic' or a folder with images/ and masks/)")
    return folder


def zero_shot_sets(params: Params) -> dict[str, Path]:
    """Prepared folder of each ``eval.zero_shot`` entry, keyed by its set name."""
    sets: dict[str, Path] = {}
    for entry in params.eval.zero_shot:
        name = entry if entry == SYNTHETIC_ZERO_SHOT else Path(entry).name
        if name in sets:
            raise DatasetError(f"eval.zero_shot: two entries are named {name!r}; rename one folder")
        sets[name] = ZERO_SHOT_ROOT / name
    return sets


def _zero_shot_source(data: DataParams, entry: str) -> Path:
    if entry == SYNTHETIC_ZERO_SHOT:
        # A different seed stream from the training domain, so no image repeats across them.
        return synthetic_dataset(data, "masonry", data.synthetic.zero_shot_images, seed_offset=1)
    folder = Path(entry)
    if not folder.exists():
        raise DatasetError(f"eval.zero_shot: dataset folder {folder} does not exist")
    return folder


def ensure_training_data(params: Params) -> dict:
    """The manifest of ``data.prepared_dir``, preparing ``data.source`` into it first if it is missing.

    For tools that only train (benchmarks): zero-shot sets, which belong to the DVC stage's outputs,
    are left alone.
    """
    data = params.data
    try:
        return load_manifest(Path(data.prepared_dir))
    except DatasetError:
        print(f"preparing {data.source} into {data.prepared_dir}", flush=True)
        return _prepare_training_data(data)


def _prepare_training_data(data: DataParams) -> dict:
    return prepare_dataset(resolve_source(data), Path(data.prepared_dir), data.img_size,
                           data.val_fraction, data.test_fraction, data.seed)


def prepare_from_params(params: Params) -> dict:
    """Prepare ``data.source`` into ``data.prepared_dir`` and each zero-shot set; return the manifest."""
    data = params.data
    # Stale sets are deleted from the zero-shot sets' folder below: keep every other folder out of it.
    entries = [entry for entry in params.eval.zero_shot if entry != SYNTHETIC_ZERO_SHOT]
    others = [(_source_folder(data), "data.source"), (Path(data.prepared_dir), "data.prepared_dir"),
              *((Path(entry), "eval.zero_shot entry") for entry in entries)]
    for folder, key in others:
        _check_apart(folder, key, ZERO_SHOT_ROOT, "the zero-shot sets' folder")
    manifest = _prepare_training_data(data)
    sets = zero_shot_sets(params)
    counts: dict[str, int] = {}
    for (name, folder), entry in zip(sets.items(), params.eval.zero_shot):
        zero_shot = prepare_dataset(_zero_shot_source(data, entry), folder, data.img_size,
                                    data.val_fraction, data.test_fraction, data.seed, test_only=True)
        counts[name] = zero_shot["counts"]["test"]
    # DVC declares data/zero_shot as an output, so it exists (with an index) even with no sets,
    # and sets dropped from eval.zero_shot do not linger in it.
    ZERO_SHOT_ROOT.mkdir(parents=True, exist_ok=True)
    for stale in ZERO_SHOT_ROOT.iterdir():
        if stale.is_dir() and stale.name not in sets:
            shutil.rmtree(stale)
    write_json(ZERO_SHOT_ROOT / "sets.json", counts)
    manifest["zero_shot"] = counts
    return manifest
