"""The promotion gate: a pure function of two evaluations (metrics.json trees) and the gate params.

Rules (``promote`` params):

* the primary metric (``primary_metric``: ``test.f1`` pooled by default, ``test.f1_image_mean`` for
  CrackSAM's per-image mean, any dotted ``<set>.<metric>``) reaches the champion's + ``margin``;
* no corruption set (``low_light_blur``, ``blur_down_up``, ...) falls by more than ``tolerance``
  on ``corruption_metric``, and no zero-shot set, nor their mean, on ``zero_shot_metric``;
* without a champion, the candidate needs a primary score of at least ``floor``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from pipeline import eval_schema as schema
from pipeline.eval_schema import corruption_names, zero_shot_names
from pipeline.params import PromoteParams

PRIMARY, CORRUPTION, ZERO_SHOT = "primary", "corruption", "zero-shot"


@dataclass(frozen=True)
class GateRow:
    """One checked metric: both scores, the delta and whether it passed (None: not checked)."""

    metric: str
    kind: str
    champion: float | None
    candidate: float | None
    rule: str
    ok: bool | None

    @property
    def delta(self) -> float | None:
        if self.champion is None or self.candidate is None:
            return None
        return self.candidate - self.champion


@dataclass(frozen=True)
class Decision:
    passed: bool
    reason: str
    rows: list[GateRow] = field(default_factory=list)


def score_at(metrics: Mapping[str, Any], path: str) -> float | None:
    """The number at a dotted path (``zero_shot.mean.iou``); set names may themselves hold dots."""
    parts = path.split(".")

    def walk(node: Any, rest: list[str]) -> Any:
        if not rest:
            return node
        if not isinstance(node, Mapping):
            return None
        # Longest key first, so a set named "cfd.v2" wins over a set "cfd" with a key "v2".
        for cut in range(len(rest), 0, -1):
            key = ".".join(rest[:cut])
            if key in node:
                found = walk(node[key], rest[cut:])
                if found is not None:
                    return found
        return None

    value = walk(metrics, parts)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def checked_metrics(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None,
                    gate: PromoteParams) -> list[tuple[str, str]]:
    """``(kind, dotted metric)`` of every row: primary, each corruption set, each zero-shot set, their mean."""
    trees = [candidate] + ([champion] if champion is not None else [])
    corruptions = sorted({name for tree in trees for name in corruption_names(tree)})
    zero_shot = sorted({name for tree in trees for name in zero_shot_names(tree)})
    rows = [(PRIMARY, gate.primary_metric)]
    rows += [(CORRUPTION, f"{name}.{gate.corruption_metric}") for name in corruptions]
    rows += [(ZERO_SHOT, f"{schema.ZERO_SHOT}.{name}.{gate.zero_shot_metric}") for name in zero_shot]
    if zero_shot:
        rows.append((ZERO_SHOT, f"{schema.ZERO_SHOT}.{schema.ZERO_SHOT_MEAN}.{gate.zero_shot_metric}"))
    return rows


def _first_model(candidate: Mapping[str, Any], gate: PromoteParams,
                 metrics: list[tuple[str, str]]) -> Decision:
    primary = score_at(candidate, gate.primary_metric)
    ok = _usable(primary) and primary >= gate.floor
    rows = [GateRow(gate.primary_metric, PRIMARY, None, primary, f">= floor {gate.floor:.4f}", ok)]
    rows += [GateRow(name, kind, None, score_at(candidate, name), "no champion", None)
             for kind, name in metrics[1:]]
    if not _usable(primary):
        return Decision(False, f"no champion yet, and the candidate has no {gate.primary_metric} score", rows)
    verdict = ">=" if ok else "<"
    reason = f"no champion yet: {gate.primary_metric} {primary:.4f} {verdict} floor {gate.floor:.4f}"
    return Decision(bool(ok), reason, rows)


def decide(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None, gate: PromoteParams) -> Decision:
    """Whether ``candidate`` may replace ``champion`` (None: there is none yet), with one row per check."""
    metrics = checked_metrics(candidate, champion, gate)
    if champion is None:
        return _first_model(candidate, gate, metrics)
    rows: list[GateRow] = []
    failures: list[str] = []
    for kind, name in metrics:
        new, old = score_at(candidate, name), score_at(champion, name)
        if kind == PRIMARY:
            rule = f">= champion + {gate.margin:.4f}"
            if not _usable(old):
                # A champion without the primary score cannot be beaten verifiably: refuse.
                rows.append(GateRow(name, kind, old, new, rule, False))
                failures.append(f"the champion has no usable {name} score")
            elif not _usable(new):
                rows.append(GateRow(name, kind, old, new, rule, False))
                failures.append(f"the candidate has no usable {name} score")
            else:
                ok = new >= old + gate.margin
                rows.append(GateRow(name, kind, old, new, rule, ok))
                if not ok:
                    failures.append(f"{name} {new:.4f} < champion {old:.4f} + margin {gate.margin:.4f}")
            continue
        rule = f">= champion - {gate.tolerance:.4f}"
        if not _usable(old):
            # A set the champion was never scored on is a new set: nothing to fall from.
            rows.append(GateRow(name, kind, old, new, "new set, not compared", None))
        elif not _usable(new):
            rows.append(GateRow(name, kind, old, new, rule, False))
            failures.append(f"the candidate has no usable {name} score")
        else:
            ok = new >= old - gate.tolerance
            rows.append(GateRow(name, kind, old, new, rule, ok))
            if not ok:
                failures.append(f"{name} fell by {old - new:.4f} (more than the tolerance {gate.tolerance:.4f})")
    if failures:
        return Decision(False, "; ".join(failures), rows)
    primary = rows[0]
    return Decision(True, f"{primary.metric} {primary.candidate:.4f} >= champion {primary.champion:.4f} + margin "
                          f"{gate.margin:.4f}, and no corruption or zero-shot set fell by more than "
                          f"{gate.tolerance:.4f}", rows)


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _check(row: GateRow) -> str:
    mark = {True: "pass", False: "FAIL", None: "—"}[row.ok]
    return f"{mark} ({row.rule})"


def render_table(decision: Decision) -> str:
    """Markdown table: metric | champion | candidate | delta | check."""
    lines = ["| metric | champion | candidate | delta | check |", "|---|---:|---:|---:|---|"]
    lines += [f"| {row.metric} | {_number(row.champion)} | {_number(row.candidate)} | "
              f"{_number(row.delta, signed=True)} | {_check(row)} |" for row in decision.rows]
    return "\n".join(lines)
