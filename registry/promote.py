"""Gated promotion: evaluate a candidate version and the champion on one suite, decide, record, move aliases.

Order of effects, so that a process killed at any point leaves a valid registry:

1. evaluate both versions (no registry writes);
2. take the promotion lease (:mod:`registry.lease`) and re-read ``champion``; if it moved meanwhile,
   release, evaluate the new champion and decide again;
3. record the decision on the candidate (tags and a description paragraph), pass or fail;
4. on pass only: ``previous-champion`` <- old champion, then ``champion`` <- candidate.

Every prefix of step 4 is valid: after the first move the old champion is both ``champion`` and
``previous-champion``. Aliases therefore end where they were or where the gate said, and
``champion`` only ever names a version this gate evaluated (or the one it already named).
"""
from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from pipeline.errors import CrackopsError
from pipeline.params import Params, PromoteParams
from registry.gate import Decision, GateRow, decide, render_table
from registry.lease import Lease, LeaseSettings
from registry.markers import PROMOTION_HEADING
from registry.versions import (CHAMPION, PREVIOUS_CHAMPION, REGISTERED_TAG, RegistryError, alias_version,
                               get_version)

TAG = "promotion"
MAX_TAG_TEXT = 1000
MAX_DESCRIPTION = 4500  # MLflow stores up to 5000 characters
Hook = Callable[[str], None]


class Evaluator(Protocol):
    """Scores a registered version (metrics.json tree); ``data`` names the data it scores on, as tags."""

    data: dict[str, str]

    def __call__(self, version: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Promotion:
    name: str
    candidate: str
    champion_before: str | None
    champion_after: str | None
    decision: Decision | None  # None when the candidate already was the champion
    applied: bool
    dry_run: bool = False


@dataclass(frozen=True)
class Rollback:
    name: str
    demoted: str | None
    restored: str


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def data_identity(prepared_dir: Path, zero_shot: dict[str, Path]) -> dict[str, str]:
    """``promotion.data`` (the prepared data's manifest digest, as ``data.manifest_sha256``) and the zero-shot sets'."""
    from pipeline.tracking.lineage import manifest_digest

    tags = {f"{TAG}.data": manifest_digest(prepared_dir)}
    if zero_shot:
        joined = json.dumps({name: manifest_digest(folder) for name, folder in sorted(zero_shot.items())})
        tags[f"{TAG}.data.zero_shot"] = hashlib.sha256(joined.encode()).hexdigest()
    return tags


class SuiteEvaluator:
    """Runs :func:`run_evaluation` for registered versions on the current prepared and zero-shot data.

    Each version's own params fix its architecture and input size; evaluation settings come from
    ``params``. Results are cached per version, and the data digest is re-checked after every
    evaluation, so candidate and champion are scored on the same data version.
    """

    def __init__(self, client: MlflowClient, name: str, params: Params, progress: bool = True) -> None:
        from pipeline.data.sources import zero_shot_sets

        self.client, self.name, self.params, self.progress = client, name, params, progress
        self.prepared = Path(params.data.prepared_dir)
        self.zero_shot = zero_shot_sets(params)
        self.data = data_identity(self.prepared, self.zero_shot)
        self._scores: dict[str, dict[str, Any]] = {}

    def __call__(self, version: str) -> dict[str, Any]:
        from pipeline.evaluation import run_evaluation
        from registry.versions import load_version_model

        if version not in self._scores:
            with tempfile.TemporaryDirectory(prefix="crackops-promote-") as tmp:
                model, trained = load_version_model(self.client, self.name, version, Path(tmp) / "model")
                scoring = trained.model_copy(update={"eval": self.params.eval, "mlflow": self.params.mlflow})
                metrics = run_evaluation(model, scoring, self.prepared, self.zero_shot, Path(tmp) / "eval",
                                         progress=self.progress)
            if data_identity(self.prepared, self.zero_shot) != self.data:
                raise CrackopsError(f"the prepared data in {self.prepared} changed while version {version} was "
                                    "evaluated; run `crackops promote` again once `crackops prepare` is done")
            self._scores[version] = metrics
        return self._scores[version]


def _tag_key(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", text)


def decision_tags(decision: Decision, champion: str | None, data: dict[str, str], gate: PromoteParams,
                  when: str) -> dict[str, str]:
    """The tags that record one gate decision on the candidate version."""
    tags = {
        f"{TAG}.decision": "passed" if decision.passed else "refused",
        f"{TAG}.reason": decision.reason[:MAX_TAG_TEXT],
        f"{TAG}.time": when,
        f"{TAG}.champion.version": champion or "none",
        f"{TAG}.gate": json.dumps(gate.model_dump(), sort_keys=True),
        **data,
    }
    for row in decision.rows:
        for side, value in (("candidate", row.candidate), ("champion", row.champion)):
            if value is not None:
                tags[f"{TAG}.{side}.{_tag_key(row.metric)}"] = f"{value:.5f}"
    return tags


def _description(previous: str | None, decision: Decision, champion: str | None, data: dict[str, str],
                 when: str) -> str:
    verdict = "passed" if decision.passed else "refused"
    against = f"champion version {champion}" if champion else "no champion"
    digest = data.get(f"{TAG}.data", "unknown")[:12]
    paragraph = "\n".join([f"{PROMOTION_HEADING} {when}: {verdict}", "",
                           f"Against {against}, both evaluated on data {digest}: {decision.reason}.", "",
                           render_table(decision)])
    head, *history = (previous or "").split(PROMOTION_HEADING)
    history = [PROMOTION_HEADING + part for part in history]
    # Oldest promotion paragraphs go first when the description would outgrow MLflow's limit.
    while history and len(head) + sum(map(len, history)) + len(paragraph) > MAX_DESCRIPTION:
        history.pop(0)
    body = head.rstrip() + ("\n\n" if head.strip() else "") + "".join(part.rstrip() + "\n\n" for part in history)
    return (body + paragraph)[-MAX_DESCRIPTION:]


def record_decision(client: MlflowClient, name: str, version: str, decision: Decision, champion: str | None,
                    data: dict[str, str], gate: PromoteParams) -> None:
    """Tags and a description paragraph on the candidate; stale per-metric tags of an earlier decision go."""
    when = utc_now()
    tags = decision_tags(decision, champion, data, gate, when)
    current = get_version(client, name, version)
    for key in current.tags:
        if key.startswith((f"{TAG}.candidate.", f"{TAG}.champion.", f"{TAG}.data")) and key not in tags:
            client.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version,
                                description=_description(current.description, decision, champion, data, when))


def require_registered(version: ModelVersion) -> ModelVersion:
    """``version``, if ``crackops register`` finished it; an interrupted one may lack evidence or alias."""
    if version.tags.get(REGISTERED_TAG) != "true":
        raise CrackopsError(f"model {version.name!r} version {version.version} was never fully registered (its "
                            f"`crackops register` was interrupted): rerun `crackops register` for run "
                            f"{version.run_id}")
    return version


def promote(
    client: MlflowClient,
    name: str,
    candidate: str,
    gate: PromoteParams,
    evaluate: Evaluator,
    *,
    dry_run: bool = False,
    settings: LeaseSettings = LeaseSettings(),
    hook: Hook | None = None,
    max_rounds: int = 3,
) -> Promotion:
    """Evaluate ``candidate`` against the champion, record the decision, move aliases on pass.

    A candidate without the ``crackops.registered`` tag (an interrupted register) is refused.
    ``hook(stage)`` is called after ``evaluated``, ``recorded`` and ``previous_moved`` (tests kill
    the process there). ``dry_run`` evaluates and decides but writes nothing.
    """
    hook = hook or (lambda stage: None)
    candidate = str(require_registered(get_version(client, name, candidate)).version)
    champion = alias_version(client, name, CHAMPION)
    for _ in range(max_rounds):
        if champion == candidate:
            return Promotion(name, candidate, champion, champion, None, applied=False, dry_run=dry_run)
        decision = decide(evaluate(candidate), evaluate(champion) if champion else None, gate)
        hook("evaluated")
        if dry_run:
            return Promotion(name, candidate, champion, champion, decision, applied=False, dry_run=True)
        with Lease(client, name, f"promote version {candidate}", settings) as lease:
            now = alias_version(client, name, CHAMPION)
            if now != champion:
                # Someone promoted meanwhile: the comparison is stale. Evaluate the new champion.
                champion = now
                continue
            lease.check()
            record_decision(client, name, candidate, decision, champion, evaluate.data, gate)
            hook("recorded")
            if not decision.passed:
                return Promotion(name, candidate, champion, champion, decision, applied=False)
            if champion is not None:
                lease.check()
                client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion)
            hook("previous_moved")
            lease.check()
            client.set_registered_model_alias(name, CHAMPION, candidate)
            return Promotion(name, candidate, champion, candidate, decision, applied=True)
    raise CrackopsError(f"model {name!r}: the champion changed {max_rounds} times while version {candidate} was "
                        "being evaluated; nothing was changed, run `crackops promote` again")


def rollback(
    client: MlflowClient,
    name: str,
    reason: str = "",
    *,
    settings: LeaseSettings = LeaseSettings(),
    hook: Hook | None = None,
) -> Rollback:
    """``champion`` <- ``previous-champion``; the demoted version is tagged with why and when.

    ``previous-champion`` is removed afterwards, so a second rollback cannot bring back the version
    just rolled back (promote it again through the gate instead).
    """
    hook = hook or (lambda stage: None)
    with Lease(client, name, "rollback", settings) as lease:
        current = alias_version(client, name, CHAMPION)
        previous = alias_version(client, name, PREVIOUS_CHAMPION)
        if previous is None:
            raise RegistryError(f"model {name!r} has no alias {PREVIOUS_CHAMPION!r}: nothing to roll back to")
        when, why = utc_now(), reason or "no reason given"
        lease.check()
        if current is not None and current != previous:
            for key, value in {f"{TAG}.rolled_back": when, f"{TAG}.rolled_back.reason": why[:MAX_TAG_TEXT],
                               f"{TAG}.rolled_back.replaced_by": previous}.items():
                client.set_model_version_tag(name, current, key, value)
            for key, value in {f"{TAG}.restored": when, f"{TAG}.restored.replacing": current}.items():
                client.set_model_version_tag(name, previous, key, value)
        hook("recorded")
        lease.check()
        client.set_registered_model_alias(name, CHAMPION, previous)
        hook("champion_moved")
        lease.check()
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    return Rollback(name, current if current != previous else None, previous)


def _row_json(row: GateRow) -> dict[str, Any]:
    return {"metric": row.metric, "kind": row.kind, "champion": row.champion, "candidate": row.candidate,
            "delta": row.delta, "rule": row.rule, "ok": row.ok}


def promotion_json(result: Promotion, data: dict[str, str]) -> dict[str, Any]:
    """What ``crackops promote --output`` writes."""
    decision = result.decision
    return {
        "model": result.name, "candidate": result.candidate, "champion_before": result.champion_before,
        "champion_after": result.champion_after, "applied": result.applied, "dry_run": result.dry_run,
        "passed": decision.passed if decision else None, "reason": decision.reason if decision else None,
        "rows": [_row_json(row) for row in decision.rows] if decision else [], "data": data,
    }


def render_promotion(result: Promotion) -> str:
    """The table and a one-line verdict, for the terminal."""
    if result.decision is None:
        return f"{result.name} version {result.candidate} already is the champion; nothing to do"
    against = f"champion version {result.champion_before}" if result.champion_before else "no champion"
    lines = [f"{result.name} version {result.candidate} against {against}:", "", render_table(result.decision), ""]
    verdict = "PASSED" if result.decision.passed else "REFUSED"
    lines.append(f"{verdict}: {result.decision.reason}")
    if result.dry_run:
        lines.append("dry run: nothing recorded, no alias moved")
    elif result.applied:
        moved = f"; {PREVIOUS_CHAMPION} -> version {result.champion_before}" if result.champion_before else ""
        lines.append(f"{CHAMPION} -> version {result.candidate}{moved}")
    else:
        lines.append(f"decision recorded on version {result.candidate}; aliases unchanged")
    return "\n".join(lines)
