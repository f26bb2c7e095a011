"""Search efficiency: SAC-style random search over a grid against TPE with ASHA pruning, in trial-epochs.

Both searches draw from the same space (``sac-config3`` by default: 150 grid points, 4 epochs a trial)
on the same data with the same seeds, using the sweep's own pieces: ``SearchSpace.grid_sample`` (the
SAC protocol: 5% of the grid, every point trained in full), ``space.suggest`` with the sampler and
pruner that ``crackops sweep --sampler tpe --pruner asha`` builds, and one epoch reported at a time.

Each configuration is trained through the one training loop (``train_with_tracking``, tracking off) with the
space's full schedule, as far as any search has asked of it, and its per-epoch validation scores are
stored; a search that asks for more epochs resumes it from the loop's resume state, and a search
that visits it again reads the stored scores. Training is seeded (``train.seed``) and a resumed
training gives the same curve as an uninterrupted one, so the searches see exactly what
``crackops sweep`` would see, and sharing the trainings makes several seeds affordable. A search is
charged for the epochs it would have trained (a pruned trial only for its epochs so far). TPE+ASHA
reports the space's pruning metric each epoch (``prune_metric``, e.g. pixel AP) and is scored, like
the random search, by the space's metric (validation F1).

For every seed, the random search's best validation F1 (over its complete trials) is the target;
the report gives the trial-epochs the random search spent on the whole protocol and until its best
trial ended, and the trial-epochs TPE+ASHA needed until a complete trial reached the target. With
``--fill-grid`` every grid point is trained in full first; then the report adds what random search
costs to reach the same level without choosing the target from its own draws (the exact
expectation over draw orders, and one independent draw order), and any number of seeds only
replays stored curves. ``--tolerance T`` counts a score as reaching the target from ``best - T`` on,
for every search alike. ``--noise-seeds K`` retrains the best ``--noise-configs`` grid points with K
more training seeds (``train.seed``) and reports how far their validation F1 moves: how much of the
difference between the top grid points is training noise.

    python benchmarks/search_efficiency.py [--space sac-config3] [--seeds 5] [--max-factor 2]
        [--fill-grid] [--prune-metric val_f1] [--tpe-startup-trials 10] [--tolerance 0]
        [--noise-seeds 0] [--noise-configs 5] [-S key=value ...]

Results: ``<out>/report.md``, ``<out>/traces.csv`` and ``<out>/best_so_far.png``; the curve cache is
``<out>/curves-<params digest>.json`` (written atomically after every training, so a killed run loses
at most the training under way), with resume states under ``<out>/curves-<digest>/``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.data.sources import ensure_training_data
from pipeline.params import DEFAULT_PARAMS_FILE, Params, apply_overrides, read_params_file, set_values, validate
from pipeline.tracking.tracked_training import train_with_tracking
from pipeline.training.callbacks import Callback, EpochResult, TrainerControl
from pipeline.training.loop import NonFiniteLossError
from search.optuna_backend import make_pruner
from search.samplers import make_sampler
from search.space import SearchSpace, load_space


FRESH_SEED = 10_000  # independent random searches draw with seeds far from the protocol's


def reaches(value: float, target: float) -> bool:
    """Whether a score reaches the target; the tolerance absorbs float noise from JSON round trips."""
    return value >= target - 1e-12


def config_key(chosen: dict[str, Any]) -> str:
    return json.dumps(chosen, sort_keys=True)


class _RecordEpochs(Callback):
    def __init__(self, stop_after: int, into: list[dict[str, float]]) -> None:
        self.stop_after, self.into = stop_after, into

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        # Every validation score, so another metric or pruning metric needs no new training.
        self.into.append({name: float(value) for name, value in result.metrics().items()
                          if name.startswith("val_") or name == "train_loss"})
        if result.epoch + 1 >= self.stop_after:
            control.stop("enough epochs for now")  # the resume state stays for later epochs


class CurveTable:
    """Per-epoch validation scores of each configuration, trained as far as a search asks, on disk.

    A configuration is trained for as many epochs as any search has asked of it so far, through the
    one training loop with the space's full schedule; asked for more, it resumes from the loop's own
    resume state (``last.pt``), as a Ray Tune trial resumes, which gives the same curve as one
    uninterrupted training. A pruned trial therefore costs only the epochs it ran.
    """

    def __init__(self, space: SearchSpace, base_tree: dict[str, Any], path: Path) -> None:
        self.space = space
        self.base_tree = base_tree
        self.path = path
        self.work_root = path.with_suffix("")
        self.curves: dict[str, dict[str, Any]] = {}
        self.epochs_trained = 0
        self.seconds = 0.0
        if path.is_file():
            self.curves = json.loads(path.read_text())["curves"]

    def values(self, chosen: dict[str, Any], epochs: int, metric: str | None = None) -> list[float]:
        """The first ``epochs`` values of ``metric`` (default: the space's metric); fewer if training
        failed: a NaN ends the list."""
        entry = self.curves.setdefault(config_key(chosen), {"epochs": [], "done": False})
        if len(entry["epochs"]) < epochs and not entry["done"]:
            self._extend(chosen, entry, epochs)
            write_json(self.path, {"space": self.space.name, "curves": self.curves})
        name = metric or self.space.metric
        return [scores.get(name, math.nan) for scores in entry["epochs"][:epochs]]

    def _extend(self, chosen: dict[str, Any], entry: dict[str, Any], epochs: int) -> None:
        params = self.space.trial_params(self.base_tree, chosen)
        work = self.work_root / hashlib.sha256(config_key(chosen).encode()).hexdigest()[:16]
        new: list[dict[str, float]] = []
        started = time.perf_counter()
        print(f"training {chosen} to epoch {epochs}", flush=True)
        try:
            train_with_tracking(params, None, callbacks=[_RecordEpochs(epochs, new)], progress=False, work=work)
        except NonFiniteLossError:
            new.append({})  # every score NaN: the sweep records the trial failed at this epoch
        self.seconds += time.perf_counter() - started
        self.epochs_trained += len(new)
        entry["epochs"] = entry["epochs"] + new
        if len(entry["epochs"]) >= self.space.epochs or (new and not new[-1]):
            entry["done"] = True
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class Trace:
    """One search run: after each finished trial, the trial-epochs spent and the best value so far."""

    method: str
    seed: int
    points: list[tuple[int, float]] = field(default_factory=list)  # (trial-epochs, best so far)
    trials: int = 0
    pruned: int = 0

    @property
    def spent(self) -> int:
        return self.points[-1][0] if self.points else 0

    @property
    def best(self) -> float:
        return self.points[-1][1] if self.points else -math.inf

    def epochs_to_reach(self, target: float) -> int | None:
        return next((spent for spent, best in self.points if reaches(best, target)), None)


def finite_max(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return max(finite) if finite else -math.inf


def random_grid_search(space: SearchSpace, table: CurveTable, seed: int) -> Trace:
    """The SAC protocol: a seeded share of the grid without replacement, every point trained in full."""
    trace, spent, best = Trace("random (grid share, SAC)", seed), 0, -math.inf
    for chosen in space.grid_sample(seed):
        curve = table.values(chosen, space.epochs)
        spent += len(curve)
        best = max(best, finite_max(curve))
        trace.trials += 1
        trace.points.append((spent, best))
    return trace


def optuna_search(space: SearchSpace, table: CurveTable, seed: int, sampler: str, pruner: str,
                  budget: int, stop: Callable[[float], bool]) -> Trace:
    """Ask-and-tell with the sweep's sampler and pruner until ``budget`` trial-epochs or ``stop(best)``:
    the pruner sees the space's pruning metric each epoch, the sampler the trial's best metric."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=space.direction, sampler=make_sampler(sampler, seed, space),
                                pruner=make_pruner(pruner))
    trace, spent, best = Trace(f"{sampler}+{pruner}", seed), 0, -math.inf
    while spent < budget and not stop(best):
        trial = study.ask()
        chosen = space.suggest(trial)
        trace.trials += 1
        pruned = False
        curve: list[float] = []
        for step in range(1, space.epochs + 1):
            curve = table.values(chosen, step)
            if len(curve) < step:
                break
            spent += 1
            if not math.isfinite(curve[-1]):
                break
            trial.report(table.values(chosen, step, space.pruning_metric)[-1], step)
            if step < space.epochs and trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            trace.pruned += 1
        elif len(curve) == space.epochs and all(math.isfinite(value) for value in curve):
            value = finite_max(curve)
            study.tell(trial, value)
            best = max(best, value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        trace.points.append((spent, best))
    return trace


def expected_random_epochs(curves: list[list[float]], target: float) -> float | None:
    """Expected trial-epochs a random search without replacement over these curves spends until a
    complete trial reaches ``target``, counting that trial in full; None if no curve reaches it.

    With K curves reaching the target, every other curve is drawn before all K of them with
    probability 1/(K+1), so the expectation is the sum of their lengths over K+1 plus one
    successful trial's length. Unlike the epochs a seeded search spent until its own best, this
    does not favour random search by measuring it against the best of its own draws.
    """
    hits = [len(curve) for curve in curves if reaches(finite_max(curve), target)]
    if not hits:
        return None
    misses = sum(len(curve) for curve in curves if not reaches(finite_max(curve), target))
    return misses / (len(hits) + 1) + statistics.mean(hits)


def fresh_random_epochs(curves: list[list[float]], target: float, seed: int) -> int | None:
    """Trial-epochs an independent random search (another draw order of the whole grid) spends
    until a complete trial reaches ``target``; None if no curve does."""
    order = list(range(len(curves)))
    random.Random(seed).shuffle(order)
    spent = 0
    for index in order:
        spent += len(curves[index])
        if reaches(finite_max(curves[index]), target):
            return spent
    return None


def params_digest(tree: dict[str, Any], space: SearchSpace) -> str:
    """Names the curve cache: what the trainings depend on, not how a search samples or prunes."""
    trained = space.model_dump(include={"epochs", "fixed", "presets", "parameters"})
    text = json.dumps({"params": tree, "space": trained}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def whole_grid_curves(space: SearchSpace, table: CurveTable, grid: list[dict[str, Any]]) -> list[list[float]]:
    """The metric's curve of every grid point if all are stored in full, else []: the random search's
    cost to reach a level is exact only when every grid point is known."""
    stored = [table.curves.get(config_key(chosen)) for chosen in grid]
    if not all(entry and entry["done"] for entry in stored):
        return []
    return [[scores.get(space.metric, math.nan) for scores in entry["epochs"]] for entry in stored]


def report(space: SearchSpace, pairs: list[tuple[Trace, Trace]], targets: list[float], tolerance: float,
           base: Params, table: CurveTable, max_factor: float, grid: list[dict[str, Any]],
           whole_grid: list[list[float]], fresh: list[int | None]) -> str:
    """``targets``: per seed, the score that counts as reaching the random search's best (its best
    less ``tolerance``); ``fresh``: per seed, an independent random search's trial-epochs to the
    target ([] without the whole grid)."""
    lines = [f"# Search efficiency: {space.name}", "",
             f"Space `{space.name}`: {len(grid)} grid points, {space.epochs} epochs a trial, "
             f"metric {space.metric}; TPE+ASHA prunes on {space.pruning_metric} after "
             f"{space.tpe_startup_trials or 10} random start-up trials. Model {base.model.family}/{base.model.variant} tuning={base.tuning.method}, "
             f"data {base.data.source} at {base.data.img_size}x{base.data.img_size}. "
             f"{len(table.curves)} distinct configurations stored "
             f"({'the whole grid' if whole_grid else 'part of the grid'}), "
             f"{table.epochs_trained} epochs of them trained in this run ({table.seconds / 60:.1f} min). "
             + (f"A search reaches the random search's best once a complete trial scores at least that best "
                f"less {tolerance:g} (`--tolerance`), for every search alike." if tolerance else
                "A search reaches the random search's best once a complete trial scores at least as high."), "",
             "| seed | random: best val F1 | random: trial-epochs (whole protocol) | random: to its own best (hindsight) "
             "| random: expected to reach it (whole grid) | TPE+ASHA: trial-epochs to reach it | TPE+ASHA: trials by then "
             "| TPE+ASHA / random protocol | TPE+ASHA / random expected |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    charged, totals, to_best, expected = [], [], [], []
    reached_count = 0
    for (random_trace, tpe_trace), target in zip(pairs, targets):
        reached = tpe_trace.epochs_to_reach(target)
        reached_count += reached is not None
        # An unreached seed counts as the whole TPE budget it spent: a lower bound on what it needed.
        spent = reached if reached is not None else tpe_trace.spent
        charged.append(spent)
        totals.append(random_trace.spent)
        to_best.append(random_trace.epochs_to_reach(target))
        expected.append(expected_random_epochs(whole_grid, target) if whole_grid else None)
        # One point per trial: the trials that ended by the time the target was reached.
        trials = tpe_trace.trials if reached is None else sum(done <= reached for done, _ in tpe_trace.points)
        bound = "" if reached is not None else "> "
        lines.append(f"| {random_trace.seed} | {random_trace.best:.4f} | {random_trace.spent} | {to_best[-1]} | "
                     f"{'' if expected[-1] is None else f'{expected[-1]:.1f}'} | "
                     f"{reached if reached is not None else f'not within {tpe_trace.spent}'} | {trials} | "
                     f"{bound}{spent / random_trace.spent:.2f} | "
                     f"{'' if expected[-1] is None else f'{bound}{spent / expected[-1]:.2f}'} |")
    lines += ["", f"TPE+ASHA reached the random search's best in {reached_count} of {len(pairs)} seeds "
              f"(stopping at {max_factor:g}x the random search's trial-epochs). Median trial-epochs to reach it: "
              f"{statistics.median(charged):.1f} (mean {statistics.mean(charged):.1f}; unreached seeds counted "
              f"at their whole budget) against {statistics.median(totals):.0f} for the whole random protocol "
              f"(median to its own best, in hindsight: {statistics.median(to_best):.1f}). "
              f"Median ratio TPE+ASHA / random protocol: "
              f"{statistics.median(s / t for s, t in zip(charged, totals)):.2f} (target: at most 0.5)."]
    if whole_grid:
        lines += ["", f"Random search's expected trial-epochs to reach the same level, from the whole grid: median "
                  f"{statistics.median(expected):.1f}; median ratio TPE+ASHA / expected random: "
                  f"{statistics.median(s / e for s, e in zip(charged, expected)):.2f}. "
                  f"Ratio of the medians: {statistics.median(charged) / statistics.median(expected):.2f}. "
                  f"An independent random search (seed {FRESH_SEED} + seed, drawing on through the whole grid) "
                  f"reached it after a median of {statistics.median(fresh):.0f} trial-epochs."]
    return "\n".join(lines) + "\n"


def traces_csv(traces: list[Trace]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "seed", "trial", "trial_epochs", "best_so_far"])
    for trace in traces:
        for index, (spent, best) in enumerate(trace.points, start=1):
            writer.writerow([trace.method, trace.seed, index, spent, "" if math.isinf(best) else f"{best:.6f}"])
    return buffer.getvalue()


def plot(pairs: list[tuple[Trace, Trace]], targets: list[float], tolerance: float, fresh: list[int | None],
         path: Path) -> None:
    """Left: best so far, one line per seed and search. Right: the share of seeds in which each
    search had reached the random search's best, against trial-epochs spent; with ``fresh`` (the
    whole grid stored), also an independent random search (another seed's draws), which, unlike the
    seed's own draws, was not chosen as the one whose best sets the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, reached) = plt.subplots(1, 2, figsize=(12, 4.5))
    alpha = 0.7 if len(pairs) <= 10 else 0.25
    colours: dict[str, str] = {}
    for trace in (trace for pair in pairs for trace in pair):
        xs = [0] + [spent for spent, _ in trace.points]
        ys = [math.nan] + [best if math.isfinite(best) else math.nan for _, best in trace.points]
        first = trace.method not in colours  # one legend entry per method, not per seed
        colour = colours.setdefault(trace.method, f"C{len(colours)}")
        curves.step(xs, ys, where="post", color=colour, alpha=alpha, label=trace.method if first else None)
    curves.set_xlabel("trial-epochs spent")
    curves.set_ylabel("best validation F1 of a complete trial")
    curves.set_title(f"Best so far, one line per seed ({len(pairs)} seeds)")
    curves.grid(alpha=0.3)
    curves.legend()

    budget = max(trace.spent for pair in pairs for trace in pair)
    lines = [("random: its own draws (hindsight)", "-",
              [random_trace.epochs_to_reach(target) for (random_trace, _), target in zip(pairs, targets)]),
             ("TPE+ASHA", "-", [tpe_trace.epochs_to_reach(target) for (_, tpe_trace), target in zip(pairs, targets)])]
    if fresh:
        lines.append(("random: independent draws", "--", fresh))
    xs = list(range(budget + 1))
    for index, (label, style, needed) in enumerate(lines):
        ys = [sum(n is not None and n <= x for n in needed) / len(pairs) for x in xs]
        reached.step(xs, ys, where="post", color=f"C{index}", linestyle=style, label=label)
    reached.set_xlabel("trial-epochs spent")
    reached.set_ylabel("share of seeds at the random search's best")
    reached.set_title("Reaching the random search's best validation F1" + (f" (less {tolerance:g})" if tolerance else ""))
    reached.set_ylim(0, 1.02)
    reached.grid(alpha=0.3)
    reached.legend(loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)


def seed_noise(space: SearchSpace, tree: dict[str, Any], table: CurveTable, configs: list[dict[str, Any]],
               extra_seeds: int, out: Path) -> list[list[float]]:
    """Per configuration, its best validation score (the space's metric) with the training seed of
    ``tree`` (from ``table``) and with each of ``extra_seeds`` further seeds, each seed's trainings
    in their own curve cache beside ``table``'s."""
    first = int(tree["train"]["seed"])
    tables = [table]
    for seed in range(first + 1, first + 1 + extra_seeds):
        seeded = set_values(tree, {"train.seed": seed})
        tables.append(CurveTable(space, seeded, out / f"curves-{params_digest(seeded, space)}.json"))
    return [[finite_max(seeded_table.values(chosen, space.epochs)) for seeded_table in tables] for chosen in configs]


def seed_noise_report(space: SearchSpace, tree: dict[str, Any], table: CurveTable, configs: list[dict[str, Any]],
                      extra_seeds: int, out: Path) -> str:
    """A report section: the best grid points' scores across training seeds and the pooled standard
    deviation, set beside the spread between those grid points with the benchmark's own seed."""
    scores = seed_noise(space, tree, table, configs, extra_seeds, out)
    first = int(tree["train"]["seed"])
    seeds = list(range(first, first + 1 + extra_seeds))
    lines = ["", f"## Training-seed noise of the best {len(configs)} grid points", "",
             f"With `train.seed` {first} (the searches' own curves) and retrained with "
             f"{', '.join(map(str, seeds[1:]))}; "
             f"best {space.metric} of the complete trial:", "",
             "| configuration | " + " | ".join(f"seed {seed}" for seed in seeds) + " | spread over seeds |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    for chosen, values in zip(configs, scores):
        lines.append(f"| {config_key(chosen)} | " + " | ".join(f"{value:.4f}" for value in values)
                     + f" | {max(values) - min(values):.4f} |")
    pooled = math.sqrt(statistics.mean(statistics.variance(values) for values in scores))
    by_seed = [[values[index] for values in scores] for index in range(len(seeds))]
    between = max(max(column) - min(column) for column in by_seed)
    lines += ["", f"Pooled standard deviation over training seeds: {pooled:.4f}. Largest spread between these "
              f"grid points under one training seed: {between:.4f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--space", default="sac-config3")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-factor", type=float, default=2.0,
                        help="TPE+ASHA stops at this multiple of the random search's trial-epochs if not there yet")
    parser.add_argument("--prune-metric", help="what ASHA compares each epoch (default: the space's prune_metric)")
    parser.add_argument("--tpe-startup-trials", type=int, help="default: the space's tpe_startup_trials")
    parser.add_argument("--fill-grid", action="store_true",
                        help="first train every grid point in full, so any number of seeds only replays stored curves")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="a score reaches the random search's best from best - TOLERANCE on (every search alike)")
    parser.add_argument("--noise-seeds", type=int, default=0,
                        help="retrain the best grid points with this many more training seeds (needs --fill-grid's cache)")
    parser.add_argument("--noise-configs", type=int, default=5, help="how many of the best grid points --noise-seeds retrains")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/search-efficiency"))
    args = parser.parse_args()

    space = load_space(args.space)
    if args.prune_metric:
        space = space.model_copy(update={"prune_metric": args.prune_metric})
    if args.tpe_startup_trials:
        space = space.model_copy(update={"tpe_startup_trials": args.tpe_startup_trials})
    tree = apply_overrides(read_params_file(args.params), [*args.overrides, "mlflow.enabled=false"])
    base = validate(tree, str(args.params))
    ensure_training_data(base)
    tree = base.to_dict()
    tree["data"]["prepared_dir"] = str(Path(base.data.prepared_dir).resolve())
    table = CurveTable(space, tree, args.out / f"curves-{params_digest(tree, space)}.json")
    print(f"cache: {table.path} ({len(table.curves)} configurations stored)", flush=True)
    grid = space.grid()
    if args.fill_grid:
        for index, chosen in enumerate(grid, start=1):
            table.values(chosen, space.epochs)
            print(f"grid point {index}/{len(grid)} stored", flush=True)

    pairs: list[tuple[Trace, Trace]] = []
    targets: list[float] = []
    for seed in range(args.seeds):
        random_trace = random_grid_search(space, table, seed)
        target = random_trace.best - args.tolerance
        targets.append(target)
        tpe_trace = optuna_search(space, table, seed, "tpe", "asha", math.ceil(args.max_factor * random_trace.spent),
                                  stop=lambda best, target=target: reaches(best, target))
        pairs.append((random_trace, tpe_trace))
        print(f"seed {seed}: random best {random_trace.best:.4f} after {random_trace.spent} trial-epochs; "
              f"TPE+ASHA reached it after {tpe_trace.epochs_to_reach(target)} "
              f"({tpe_trace.trials} trials, {tpe_trace.pruned} pruned)", flush=True)

    whole_grid = whole_grid_curves(space, table, grid)
    fresh = [fresh_random_epochs(whole_grid, target, FRESH_SEED + random_trace.seed)
             for (random_trace, _), target in zip(pairs, targets)] if whole_grid else []
    text = report(space, pairs, targets, args.tolerance, base, table, args.max_factor, grid, whole_grid, fresh)
    if args.noise_seeds:
        if not whole_grid:
            raise SystemExit("--noise-seeds needs every grid point stored: run with --fill-grid first")
        ranked = sorted(zip(grid, whole_grid), key=lambda point: -finite_max(point[1]))
        top = [chosen for chosen, _ in ranked[:args.noise_configs]]
        text += seed_noise_report(space, tree, table, top, args.noise_seeds, args.out)
    traces = [trace for pair in pairs for trace in pair]
    write_text(args.out / "report.md", text)
    write_text(args.out / "traces.csv", traces_csv(traces))
    plot(pairs, targets, args.tolerance, fresh, args.out / "best_so_far.png")
    print("\n" + text)
    print(f"written: {args.out / 'report.md'}, {args.out / 'traces.csv'}, {args.out / 'best_so_far.png'}")


if __name__ == "__main__":
    sys.exit(main())
