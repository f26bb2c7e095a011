"""Side-by-side scores of runs and model versions, laid out like the SAC and CrackSAM papers' tables."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from pipeline import eval_schema as schema
from pipeline.errors import CrackopsError
from registry.lineage import architecture
from registry.versions import alias_version, get_version, parse_models_uri

_NAME_VERSION = re.compile(r"^(?P<name>[^/@:]+)/(?P<version>\d+)$")
# Before a headline score's metric header: nothing for the test split, the set's label otherwise.
_LABELS = {schema.TEST: "", **{s.name: f"{s.label} " for s in schema.CORRUPTION_SETS}}
# (run metric from log_evaluation, version tag from register, column header) of the headline scores
# (pipeline/eval_schema.py); the zero-shot mean and std share one column.
SCORES = tuple((score.run_metric, score.tag, f"{_LABELS[score.set]}{schema.HEADERS[score.metric]}")
               for score in schema.HEADLINE_SCORES if score.set in _LABELS)
_SUMMARY = {score.set: (score.run_metric, score.tag) for score in schema.HEADLINE_SCORES}
ZERO_SHOT_MEAN = _SUMMARY[f"{schema.ZERO_SHOT}.{schema.ZERO_SHOT_MEAN}"]
ZERO_SHOT_STD = _SUMMARY[f"{schema.ZERO_SHOT}.{schema.ZERO_SHOT_STD}"]
ZERO_SHOT_HEADER = f"Zero-shot {schema.HEADERS[schema.ZERO_SHOT_HEADLINE]} (mean ± std)"


@dataclass
class Entry:
    """One compared model: where it came from and its numbers (None where unknown)."""

    ref: str
    label: str
    run: Run | None
    version_tags: dict[str, str] = field(default_factory=dict)

    def value(self, metric: str, tag: str) -> float | None:
        if self.run is not None and metric in self.run.data.metrics:
            return self.run.data.metrics[metric]
        try:
            return float(self.version_tags[tag])
        except (KeyError, ValueError):
            return None


def resolve_ref(client: MlflowClient, ref: str) -> Entry:
    """A run id, ``name/version``, ``models:/name/version`` or ``models:/name@alias``."""
    parsed = parse_models_uri(ref)
    match = _NAME_VERSION.match(ref)
    if parsed or match:
        name, version, alias = parsed if parsed else (match["name"], match["version"], None)
        if alias is not None:
            version = alias_version(client, name, alias)
            if version is None:
                raise CrackopsError(f"{ref}: model {name!r} has no alias {alias!r}")
        model_version = get_version(client, name, version)
        label = f"{name} v{version}" + "".join(f" @{a}" for a in model_version.aliases)
        run = _get_run(client, model_version.run_id, ref) if model_version.run_id else None
        return Entry(ref, label, run, dict(model_version.tags))
    run = _get_run(client, ref, ref)
    return Entry(ref, run.info.run_name or ref[:8], run)


def _get_run(client: MlflowClient, run_id: str, ref: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise CrackopsError(f"{ref!r} is neither a run id, name/version nor models:/name@alias ({error.message})") \
            from None


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _method(entry: Entry) -> str:
    if entry.run is None:
        return "—"
    return f"{architecture(entry.run)} {entry.run.data.params.get('tuning.method', '?')}"


def test_data(entry: Entry) -> tuple[str, str] | None:
    """What the entry was scored on: the data source and the prepared data's manifest digest
    (the test split is part of it); None where the run recorded neither."""
    tags = entry.run.data.tags if entry.run else {}
    params = entry.run.data.params if entry.run else {}
    digest = tags.get("data.manifest_sha256") or entry.version_tags.get("data.manifest_sha256")
    source = params.get("data.source") or tags.get("data.source") or entry.version_tags.get("data.source")
    if digest is None and source is None:
        return None
    return source or "?", digest or "?"


def _data_label(data: tuple[str, str] | None) -> str:
    return "—" if data is None else f"{data[0]} @{data[1][:8]}"


def mixed_test_data(entries: list[Entry]) -> str | None:
    """One line naming which entries were scored on which data, when they differ; else None."""
    known = {entry.label: test_data(entry) for entry in entries if test_data(entry) is not None}
    if len(set(known.values())) <= 1:
        return None
    return "scored on different test data: " + "; ".join(f"{label} on {_data_label(data)}" for label, data in known.items())


def _params(entry: Entry) -> str:
    value = entry.run.data.metrics.get("trainable_params") if entry.run else None
    return "—" if value is None else f"{int(value):,}"


def render_compare(entries: list[Entry]) -> str:
    """Markdown: a score table (one row per model) and a lineage table."""
    # No speed column: a run's seconds per epoch measure the machine and its load at the time, not the model.
    header = ["Model", "Method", *[h for _, _, h in SCORES], ZERO_SHOT_HEADER, "Trainable params",
              "Test data"]
    lines = ["## Scores", "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for entry in entries:
        mean, std = entry.value(*ZERO_SHOT_MEAN), entry.value(*ZERO_SHOT_STD)
        zero_shot = "—" if mean is None else f"{_number(mean)} ± {_number(std)}"
        cells = [entry.label, _method(entry), *[_number(entry.value(m, t)) for m, t, _ in SCORES], zero_shot,
                 _params(entry), _data_label(test_data(entry))]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += ["", "P, R, F1, IoU at the evaluation threshold on the test split, pooled (TP/FP/FN summed over the set); "
              "img-mean: the mean of each image's score (CrackSAM's test numbers); ODS and AP with the pixel tolerance "
              "(eval.tolerance_rule); "
              "corruption sets are CrackSAM's; zero-shot as in SAC (population std).", "", "## Lineage", "",
              "| Model | Run | Git commit | Data (manifest sha256) |", "|---|---|---|---|"]
    for entry in entries:
        tags = entry.run.data.tags if entry.run else {}
        run_id = entry.run.info.run_id if entry.run else "—"
        commit = (tags.get("git.commit") or entry.version_tags.get("git.commit") or "—")[:12]
        data = (tags.get("data.manifest_sha256") or entry.version_tags.get("data.manifest_sha256") or "—")[:12]
        lines.append(f"| {entry.label} | {run_id} | {commit} | {data} |")
    return "\n".join(lines) + "\n"


def compare(client: MlflowClient, refs: list[str], force: bool = False) -> str:
    """The comparison as Markdown; refuses entries scored on different test data unless ``force``."""
    if not refs:
        raise CrackopsError("name at least one run id, name/version or models:/name@alias to compare")
    entries = [resolve_ref(client, ref) for ref in refs]
    mixed = mixed_test_data(entries)
    if mixed and not force:
        raise CrackopsError(f"{mixed}: their scores do not compare (pass --force to show them side by side anyway)")
    table = render_compare(entries)
    return f"> **Warning**: {mixed}; the scores do not compare.\n\n{table}" if mixed else table
