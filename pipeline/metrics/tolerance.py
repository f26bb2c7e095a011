"""Tolerance rules for ODS / OIS / AP, by name (``eval.tolerance_rule``).

A rule is a meter class with ``update(prob, target)`` per image, ``compute()`` giving at least
``ods, ods_threshold, ois, ap, pr_curve``, ``per_image_best()`` and a static ``describe(tolerance,
n_thresholds)`` for the report. A new rule is a new file, one entry in :data:`TOLERANCE_RULES`,
its name in ``TOLERANCE_RULE_NAMES`` (pipeline/eval_schema.py: the choices params validation
offers without importing the metrics) and one test.

* ``square``: the DeepLabV3 crack study's rule (:mod:`pipeline.metrics.square_rule`);
* ``bsds``: the BSDS boundary benchmark as pyEdgeEval ports it (:mod:`pipeline.metrics.bsds_rule`).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline.metrics.bsds_rule import BSDSRuleMeter
from pipeline.metrics.square_rule import SquareRuleMeter


class ToleranceRuleMeter(Protocol):
    name: str
    thresholds: np.ndarray

    def __len__(self) -> int: ...
    def update(self, prob: np.ndarray, target: np.ndarray) -> None: ...
    def compute(self) -> dict: ...
    def per_image_best(self) -> list[tuple[float, float]]: ...


TOLERANCE_RULES: dict[str, type] = {
    "square": SquareRuleMeter,
    "bsds": BSDSRuleMeter,
}


def tolerance_rule(name: str) -> type:
    """The meter class of rule ``name``; a one-line error naming ``eval.tolerance_rule`` otherwise."""
    try:
        return TOLERANCE_RULES[name]
    except KeyError:
        raise ValueError(f"eval.tolerance_rule: unknown rule {name!r} (known: {', '.join(TOLERANCE_RULES)})") from None


def tolerance_meter(name: str, tolerance: int = 2, n_thresholds: int = 99) -> ToleranceRuleMeter:
    """A fresh meter of rule ``name``."""
    return tolerance_rule(name)(tolerance, n_thresholds)


__all__ = ["TOLERANCE_RULES", "ToleranceRuleMeter", "tolerance_meter", "tolerance_rule"]
