"""Evaluation suite: test split, CrackSAM corruption sets, a blur sweep and zero-shot domains.

:func:`run_evaluation` scores every set and writes ``metrics.json`` (every score), ``pr_curve.csv``
and ``blur_sweep.csv``, PNG plots, overlay panels and ``report.md``; the evaluate stage copies the
headline scores and the two CSVs to ``results/`` for DVC (:mod:`pipeline.results`).
"""
from __future__ import annotations

from pipeline.evaluation.report import render_report
from pipeline.evaluation.scoring import SetScore, score_set
from pipeline.evaluation.sets import CorruptImage, EvalSet, build_eval_sets, image_only
from pipeline.evaluation.suite import build_metrics, run_evaluation, zero_shot_summary

__all__ = [
    "CorruptImage",
    "EvalSet",
    "SetScore",
    "build_eval_sets",
    "build_metrics",
    "image_only",
    "render_report",
    "run_evaluation",
    "score_set",
    "zero_shot_summary",
]
