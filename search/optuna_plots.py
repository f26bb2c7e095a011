"""The sweep's plots as PNG files (optimization history, importances, parallel coordinates), drawn
by Optuna's matplotlib visualisation from the trial rows of any backend."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable

import optuna

from pipeline.atomic import atomic_path, write_json
from search.results import TrialRow
from search.space import SearchSpace
from search.states import COMPLETE, FAILED, PRUNED

PLOT_DIR = "plots"
DRAWN_FOR = ".plots-drawn-for.json"  # beside PLOT_DIR: which trials the plots show, so they are drawn once per state of the study
_OPTUNA_STATES = {COMPLETE: optuna.trial.TrialState.COMPLETE, PRUNED: optuna.trial.TrialState.PRUNED,
                  FAILED: optuna.trial.TrialState.FAIL}


def _plotters() -> dict[str, Callable]:
    from optuna.visualization import matplotlib as plots

    return {
        "optimization_history": plots.plot_optimization_history,
        "param_importances": plots.plot_param_importances,
        "parallel_coordinate": plots.plot_parallel_coordinate,
    }


def rows_as_study(space: SearchSpace, rows: list[TrialRow]) -> optuna.Study:
    """The ended trials as an in-memory Optuna study (the visualisation's input)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    try:
        study = optuna.create_study(direction=space.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for row in sorted(rows, key=lambda item: item.number):
        if row.state not in _OPTUNA_STATES:
            continue
        fixed = optuna.trial.FixedTrial(space.encode(row.params))
        space.suggest(fixed)
        state = _OPTUNA_STATES[row.state]
        value = row.value if state == optuna.trial.TrialState.COMPLETE else None
        if state == optuna.trial.TrialState.COMPLETE and value is None:
            state = optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(params=fixed.params, distributions=fixed.distributions,
                                                  value=value, state=state, user_attrs={"number": row.number}))
    return study


def save_plots(space: SearchSpace, rows: list[TrialRow], out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Write each plot that can be drawn to ``out_dir/plots/<name>.png``.

    Returns the files and, for each plot left out, why (e.g. importances need two complete trials).
    Plots already drawn there from the same rows are kept, not drawn again: workers finishing a
    study together on one host draw it once (seconds each, under the study's lock).
    """
    folder = out_dir / PLOT_DIR
    digest = rows_digest(rows)
    drawn_for = _read_drawn_for(out_dir / DRAWN_FOR)
    if drawn_for.get("rows") == digest and all((folder / name).exists() for name in drawn_for["written"]):
        return [folder / name for name in drawn_for["written"]], drawn_for["skipped"]
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    study = rows_as_study(space, rows)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return [], {"all": "no complete trial"}
    folder.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for name, plot in _plotters().items():
        if name == "param_importances":
            nothing_to_rank = _nothing_to_rank(complete)
            if nothing_to_rank:
                skipped[name] = nothing_to_rank
                continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib plot
                axes = plot(study, target_name=space.metric)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            path = folder / f"{name}.png"
            with atomic_path(path) as partial:
                figure.savefig(partial, dpi=100, format="png")
            written.append(path)
        except Exception as error:  # noqa: BLE001 - a plot that cannot be drawn must not fail the sweep
            skipped[name] = f"{type(error).__name__}: {error}"
        finally:
            plt.close("all")
    write_json(out_dir / DRAWN_FOR, {"rows": digest, "written": [path.name for path in written], "skipped": skipped})
    return written, skipped


def _nothing_to_rank(complete: list[optuna.trial.FrozenTrial]) -> str | None:
    """Why parameter importances would say nothing (Optuna draws equal bars), or None."""
    if len(complete) < 2:
        return "needs at least 2 complete trials"
    if len({trial.value for trial in complete}) == 1:
        return f"every complete trial scored {complete[0].value:.4f}: nothing to rank"
    if not any(len({json.dumps(trial.params.get(name), default=str) for trial in complete}) > 1
               for name in complete[0].params):
        return "no parameter took two values among the complete trials"
    return None


def rows_digest(rows: list[TrialRow]) -> str:
    """A digest of what the plots show: each trial's number, state, value and params."""
    shown = [[row.number, row.state, row.value, row.params] for row in sorted(rows, key=lambda item: item.number)]
    return hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()


def _read_drawn_for(path: Path) -> dict:
    try:
        drawn_for = json.loads(path.read_text())
        return drawn_for if isinstance(drawn_for, dict) and {"rows", "written", "skipped"} <= drawn_for.keys() else {}
    except (OSError, ValueError):
        return {}
