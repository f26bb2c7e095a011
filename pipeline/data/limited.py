"""Limited supervision (lightweight-SAM study): the seeded 1%-shot and one-shot training sets."""
from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from pipeline.errors import DatasetError


def _group_size(n: int, train_fraction: float | None, shots_per_dataset: int | None) -> int:
    if shots_per_dataset is not None:
        return min(shots_per_dataset, n)
    if train_fraction is not None:
        # At least one image per dataset: 1% of 80 images is still a one-image training set.
        return min(n, max(1, round(train_fraction * n)))
    return n


def select_training_stems(
    stems: list[str],
    train_fraction: float | None,
    shots_per_dataset: int | None,
    seed: int,
    groups: dict[str, str] | None = None,
) -> list[str]:
    """A seeded subset of ``stems``: ``train_fraction`` or ``shots_per_dataset`` of each source dataset.

    ``groups`` maps a stem to its source dataset (None: one dataset, so ``shots_per_dataset`` is
    the total). Each dataset keeps at least one image. The result is sorted and depends only on
    the set of stems, the rule and the seed, not on the input order.
    """
    if train_fraction is not None and shots_per_dataset is not None:
        raise ValueError("give train_fraction or shots_per_dataset, not both")
    if train_fraction is not None and not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    if shots_per_dataset is not None and shots_per_dataset < 1:
        raise ValueError(f"shots_per_dataset must be >= 1, got {shots_per_dataset}")
    if not stems:
        raise DatasetError("no training images to select from")
    by_group: dict[str, list[str]] = defaultdict(list)
    for stem in sorted(set(stems)):
        by_group[groups[stem] if groups is not None else ""].append(stem)
    chosen: list[str] = []
    # One generator for all datasets, visited in name order: adding a dataset changes nothing before it.
    rng = np.random.default_rng(seed)
    for name in sorted(by_group):
        members = by_group[name]
        picks = rng.permutation(len(members))[: _group_size(len(members), train_fraction, shots_per_dataset)]
        chosen += [members[int(i)] for i in picks]
    return sorted(chosen)


def groups_from_pattern(stems: list[str], pattern: str) -> dict[str, str]:
    """Source dataset of each stem: the regex's first group (or whole match) at the start of the stem.

    E.g. ``'^([A-Za-z0-9]+)_'`` maps ``cfd_001`` to ``cfd``; a stem that does not match is an error.
    """
    regex = re.compile(pattern)
    groups, unmatched = {}, []
    for stem in stems:
        match = regex.match(stem)
        if match is None:
            unmatched.append(stem)
            continue
        groups[stem] = match.group(1) if regex.groups else match.group(0)
    if unmatched:
        raise DatasetError(f"data.dataset_pattern {pattern!r} matches no source dataset in "
                           f"{len(unmatched)} training stems, e.g. {', '.join(unmatched[:5])}")
    return groups


def is_limited(train_fraction: float | None, shots_per_dataset: int | None) -> bool:
    return train_fraction is not None or shots_per_dataset is not None


def limited_training_stems(
    train_stems: list[str],
    train_fraction: float | None,
    shots_per_dataset: int | None,
    seed: int,
    dataset_pattern: str | None = None,
) -> list[str] | None:
    """The subset ``data.train_fraction`` / ``data.shots_per_dataset`` select, or None for all images."""
    if not is_limited(train_fraction, shots_per_dataset):
        return None
    groups = groups_from_pattern(train_stems, dataset_pattern) if dataset_pattern else None
    return select_training_stems(train_stems, train_fraction, shots_per_dataset, seed, groups)
