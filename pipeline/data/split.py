"""Seeded train/val/test split: the same pairs and seed give the same split on any machine."""
from __future__ import annotations

import numpy as np

from pipeline.data.folder import SamplePair
from pipeline.errors import DatasetError


def _by_stem(pairs: list[SamplePair]) -> list[SamplePair]:
    # Sorting before permuting makes the split independent of directory listing order.
    return sorted(pairs, key=lambda p: (p.stem, str(p.image)))


def split_pairs(
    pairs: list[SamplePair],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, list[SamplePair]]:
    """Split into ``{"train", "val", "test"}``, each sorted by stem and each holding >= 1 pair."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    n = len(pairs)
    if n < 3:
        raise DatasetError(f"need at least 3 image/mask pairs to split into train/val/test, got {n}")

    # Every split non-empty: training needs a val set for early stopping and a test set to report.
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    while n_val + n_test > n - 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1

    ordered = _by_stem(pairs)
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in perm]
    return {
        "train": _by_stem(shuffled[n_val + n_test :]),
        "val": _by_stem(shuffled[:n_val]),
        "test": _by_stem(shuffled[n_val : n_val + n_test]),
    }


def carve_split(pairs: list[SamplePair], n: int, seed: int) -> tuple[list[SamplePair], list[SamplePair]]:
    """Take ``n`` seeded-random pairs out of ``pairs``: returns (taken, rest), each sorted by stem.

    Used when a pre-split dataset ships without val/ or test/ (e.g. train/ and test/ only).
    """
    if not 1 <= n < len(pairs):
        raise DatasetError(f"cannot take {n} of {len(pairs)} pairs and keep at least one for training")
    ordered = _by_stem(pairs)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    return _by_stem(shuffled[:n]), _by_stem(shuffled[n:])
