"""The evaluation schema: the sets an evaluation scores, the metrics of each, and the headline scores.

The one home of these names. ``metrics.json`` (pipeline/evaluation/suite.py) and its report, the
DVC headline file ``results/metrics.json`` (pipeline/results.py), the model version tags
(registry/register.py), ``crackops compare``, the promotion gate (registry/gate.py) and the params
validation (pipeline/params.py) all read them here. Adding a metric or a corruption set is one entry
below plus its computation (pipeline/metrics/, ``CORRUPTIONS`` in pipeline/data/corruptions.py).

Plain data and the standard library only: params.py (the lowest layer) and registry/ (which must not
load torch) import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# --- metrics.json's layout -----------------------------------------------------------------------
# Top level: the test split, one key per corruption set, the blur sweep and the zero-shot sets.
TEST = "test"
BLUR_SWEEP = "blur_sweep"
ZERO_SHOT = "zero_shot"
# Every other top-level key is a corruption set, so trees from older or newer code still read.
FIXED_SECTIONS = (TEST, BLUR_SWEEP, ZERO_SHOT)
# The zero-shot summary beside the zero-shot sets (population std); no set may take these names.
ZERO_SHOT_MEAN, ZERO_SHOT_STD = "mean", "std"
SUMMARY_KEYS = (ZERO_SHOT_MEAN, ZERO_SHOT_STD)
BLUR_POINT_PREFIX = "k"  # blur_sweep.k9: the point of kernel 9


@dataclass(frozen=True)
class Metric:
    """One score of a set in metrics.json.

    ``header``: its column in the report and ``crackops compare`` (None: not a column);
    ``headline``: copied, for the test split, to results/metrics.json, the version tags and compare;
    ``gate``: a score ``promote.corruption_metric`` / ``zero_shot_metric`` may name;
    ``blur_sweep``: kept at each blur-sweep point.
    """

    key: str
    header: str | None = None
    headline: bool = False
    gate: bool = False
    blur_sweep: bool = False


# In column order. Pooled scores (TP/FP/FN summed over the set), per-image means (CrackSAM's test
# numbers), pixel AP, then the tolerance rule's (eval.tolerance_rule) ODS/OIS/AP.
METRICS = (
    Metric("precision", "P", headline=True, gate=True),
    Metric("recall", "R", headline=True, gate=True),
    Metric("f1", "F1", headline=True, gate=True, blur_sweep=True),
    Metric("iou", "IoU", headline=True, gate=True, blur_sweep=True),
    Metric("precision_image_mean", gate=True),
    Metric("recall_image_mean", gate=True),
    Metric("f1_image_mean", "F1 img-mean", headline=True, gate=True, blur_sweep=True),
    Metric("iou_image_mean", "IoU img-mean", headline=True, gate=True, blur_sweep=True),
    Metric("pixel_ap"),
    Metric("ods", "ODS", headline=True, gate=True),
    Metric("ods_threshold"),  # a threshold, not a score
    Metric("ois", "OIS", gate=True),
    Metric("ois_std"),  # the square rule only
    Metric("ap", "AP", headline=True, gate=True),
)
METRIC_KEYS = tuple(m.key for m in METRICS)
HEADERS = {m.key: m.header for m in METRICS if m.header}
COLUMNS = tuple(HEADERS.items())  # (metrics.json key, column header) of the report's main table
GATE_METRICS = tuple(m.key for m in METRICS if m.gate)
BLUR_SWEEP_METRICS = tuple(m.key for m in METRICS if m.blur_sweep)

# The one headline score of the other sets, as their papers report them.
CORRUPTION_HEADLINE = "f1"  # CrackSAM's robustness sets
ZERO_SHOT_HEADLINE = "iou"  # the SAC study's zero-shot domains


@dataclass(frozen=True)
class CorruptionSet:
    """A corrupted copy of the test split (images only, never the masks); ``CORRUPTIONS[name]`` makes it."""

    name: str
    label: str  # its columns in ``crackops compare``
    note: str  # how the report describes it


# In metrics.json's order.
CORRUPTION_SETS = (
    CorruptionSet("low_light_blur", "low-light+blur",
                  "HSV value −50, then a 9×9 Gaussian blur (CrackSAM robustness set 1)"),
    CorruptionSet("blur_down_up", "blur+down-up",
                  "21×21 Gaussian blur, then bicubic down to half size and back up (CrackSAM robustness set 2)"),
)
CORRUPTION_NAMES = tuple(s.name for s in CORRUPTION_SETS)

# ODS/OIS/AP rules by name (eval.tolerance_rule); pipeline/metrics/tolerance.py maps each to its meter.
TOLERANCE_RULE_NAMES = ("square", "bsds")


@dataclass(frozen=True)
class Headline:
    """A headline score: ``metric`` of the set at dotted ``set`` (``zero_shot.mean``) in metrics.json."""

    set: str
    metric: str
    dvc: bool = True  # also in results/metrics.json (what `dvc metrics show` lists)

    @property
    def path(self) -> str:
        """``test.f1``: its path in metrics.json and results/metrics.json, as ``promote.primary_metric`` names it."""
        return f"{self.set}.{self.metric}"

    @property
    def tag(self) -> str:
        """The model version tag ``crackops register`` copies it to."""
        return f"eval.{self.path}"

    @property
    def run_metric(self) -> str:
        """The MLflow run metric: the tree flattened with ``_`` (pipeline.tracking's ``flatten_metrics``)."""
        return self.path.replace(".", "_")


# In results/metrics.json's and compare's order. The zero-shot std stays out of results/metrics.json:
# `dvc metrics diff` of a spread says little.
HEADLINE_SCORES = (
    *(Headline(TEST, m.key) for m in METRICS if m.headline),
    *(Headline(s.name, CORRUPTION_HEADLINE) for s in CORRUPTION_SETS),
    Headline(f"{ZERO_SHOT}.{ZERO_SHOT_MEAN}", ZERO_SHOT_HEADLINE),
    Headline(f"{ZERO_SHOT}.{ZERO_SHOT_STD}", ZERO_SHOT_HEADLINE, dvc=False),
)
# A model version's description lists these first: the pooled test scores a reviewer looks at first.
LEADING_SCORES = (f"{TEST}.f1", f"{TEST}.iou")


def blur_point(kernel: int) -> str:
    """The blur sweep's key of ``kernel`` (``k9``)."""
    return f"{BLUR_POINT_PREFIX}{kernel}"


def blur_kernel(point: str) -> str:
    """The kernel of a blur sweep key, as written (``"9"``)."""
    return point.removeprefix(BLUR_POINT_PREFIX)


def corruption_names(metrics: Mapping[str, Any]) -> list[str]:
    """The corruption sets in a metrics.json tree: every top-level key but the fixed sections."""
    return [key for key in metrics if key not in FIXED_SECTIONS]


def zero_shot_names(metrics: Mapping[str, Any]) -> list[str]:
    """The zero-shot sets in a metrics.json tree, without the mean/std summary."""
    return [key for key in metrics.get(ZERO_SHOT, {}) if key not in SUMMARY_KEYS]


__all__ = [
    "BLUR_SWEEP", "BLUR_SWEEP_METRICS", "COLUMNS", "CORRUPTION_HEADLINE", "CORRUPTION_NAMES", "CORRUPTION_SETS",
    "CorruptionSet", "FIXED_SECTIONS", "GATE_METRICS", "HEADERS", "HEADLINE_SCORES", "Headline", "LEADING_SCORES",
    "METRICS", "METRIC_KEYS", "Metric", "SUMMARY_KEYS", "TEST", "TOLERANCE_RULE_NAMES", "ZERO_SHOT",
    "ZERO_SHOT_HEADLINE", "ZERO_SHOT_MEAN", "ZERO_SHOT_STD", "blur_kernel", "blur_point", "corruption_names",
    "zero_shot_names",
]
