"""Optuna's matplotlib plots of a study as PNG files (optimization history, importances, parallel)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import optuna

PLOT_DIR = "plots"


def _plotters() -> dict[str, Callable]:
    from optuna.visualization import matplotlib as plots

    return {
        "optimization_history": plots.plot_optimization_history,
        "param_importances": plots.plot_param_importances,
        "parallel_coordinate": plots.plot_parallel_coordinate,
    }


def save_plots(study: optuna.Study, out_dir: Path, target_name: str) -> tuple[list[Path], dict[str, str]]:
    """Write each plot that can be drawn to ``out_dir/plots/<name>.png``.

    Returns the files and, for each plot left out, why (e.g. importances need two complete trials).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return [], {"all": "no complete trial"}
    folder = out_dir / PLOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for name, plot in _plotters().items():
        if name == "param_importances" and len(complete) < 2:
            skipped[name] = "needs at least 2 complete trials"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib plot
                axes = plot(study, target_name=target_name)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            path = folder / f"{name}.png"
            figure.savefig(path, dpi=100)
            written.append(path)
        except Exception as error:  # noqa: BLE001 - a plot that cannot be drawn must not fail the sweep
            skipped[name] = f"{type(error).__name__}: {error}"
        finally:
            plt.close("all")
    return written, skipped
