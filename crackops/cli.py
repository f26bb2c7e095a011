"""``crackops``: the command line. Each subcommand is a thin entry point over library code.

Every subcommand reads ``params.yaml`` (the built-in defaults where there is none; ``--params``
names another file, which must exist) and takes ``-S key=value`` overrides with dotted keys and
YAML-parsed values, like ``dvc exp run -S``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from pipeline.atomic import write_json
from pipeline.errors import CrackopsError, ParamsError, storage_problem
from pipeline.params import DEFAULT_PARAMS_FILE, Params, load_params

RUN_FILE = "mlflow_run.json"
# What a rerun after a full disk or a permission error picks up from (default: outputs are untouched).
RERUN_HINTS = {
    "train": "training resumes from its last whole epoch",
    "embed": "embeddings already stored are reused",
    "sweep": "the sweep resumes: rerun with the same --study and --storage",
}
Command = Callable[[Params, argparse.Namespace], int | None]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(function: Command) -> Command:
        COMMANDS[name] = function
        return function

    return register


@command("prepare")
def _prepare(params: Params, args: argparse.Namespace) -> None:
    from pipeline.data.sources import prepare_from_params

    manifest = prepare_from_params(params)
    counts = ", ".join(f"{split} {n}" for split, n in manifest["counts"].items())
    print(f"prepared {params.data.source} into {params.data.prepared_dir}: {counts}")


@command("embed")
def _embed(params: Params, args: argparse.Namespace) -> None:
    from pipeline.distill.embed import embed_from_params

    report = embed_from_params(params, progress=not args.no_progress)
    if report.skipped:
        print(f"model.family is {params.model.family}, not sam_lite: nothing to embed "
              f"(placeholder index in {report.folder})")
        return
    teacher = report.teacher
    state = "written" if report.written else "unchanged"
    print(f"teacher {teacher['variant']} at {teacher['img_size']}px (fingerprint {teacher['fingerprint'][:12]}): "
          f"{report.computed} images embedded, {report.reused} reused; {report.folder} {state}")


@command("distill")
def _distill(params: Params, args: argparse.Namespace) -> None:
    from pipeline.distill.student_training import distill_from_params

    report = distill_from_params(params, progress=not args.no_progress)
    if report.skipped:
        print(f"model.family is {params.model.family}, not sam_lite: placeholder written to {report.student_path}")
        return
    print(f"student distilled on {report.images} images in {report.seconds:.0f}s: final embedding MSE "
          f"{report.final_mse:.5f}; written to {report.student_path}")


@command("train")
def _train(params: Params, args: argparse.Namespace) -> None:
    from pipeline.results import HISTORY_PLOT, PIPELINE_TRAIN_DIR, publish_training
    from pipeline.tracking.tracked_training import train_with_tracking
    from pipeline.training.run import HISTORY_FILE

    out_dir = Path(params.train.out_dir)
    outcome, run_id = train_with_tracking(params, out_dir, progress=not args.no_progress)
    if run_id:
        print(f"MLflow run {run_id}")
    else:
        # dvc.yaml declares this file; with tracking off it says so, and `register` refuses clearly.
        write_json(out_dir / RUN_FILE, {"run_id": None, "tracking": "disabled"})
    if out_dir == PIPELINE_TRAIN_DIR:
        publish_training(out_dir / HISTORY_FILE)  # what `dvc plots` draws, in git-tracked results/
    else:
        print(f"{HISTORY_PLOT} not updated: train.out_dir is {out_dir}, not the pipeline's {PIPELINE_TRAIN_DIR}")
    best = outcome.fit.best_val
    print(f"best epoch {outcome.fit.best_epoch + 1}: validation F1 {best['f1']:.4f} "
          f"(P {best['precision']:.4f}, R {best['recall']:.4f}, IoU {best['iou']:.4f}); "
          f"model written to {params.train.out_dir}")


@command("evaluate")
def _evaluate(params: Params, args: argparse.Namespace) -> None:
    from pipeline.data.sources import zero_shot_sets
    from pipeline.evaluation import run_evaluation
    from pipeline.evaluation.suite import BLUR_SWEEP_CSV, METRICS_FILE, PR_CURVE_CSV
    from pipeline.training.trained import load_trained_model
    from pipeline.results import (HEADLINE_METRICS, PIPELINE_EVAL_DIR, PIPELINE_TRAIN_DIR, RESULTS_DIR,
                                  publish_evaluation)
    from pipeline.training.run import METRICS_FILE as TRAIN_METRICS_FILE

    train_dir, out_dir = Path(params.train.out_dir), Path(params.eval.out_dir)
    model, trained = load_trained_model(train_dir)
    # The model's own params fix its architecture and input size; evaluation settings come from now.
    scoring = trained.model_copy(update={"eval": params.eval, "mlflow": params.mlflow})
    metrics = run_evaluation(model, scoring, Path(params.data.prepared_dir), zero_shot_sets(params), out_dir,
                             progress=not args.no_progress)
    run_file = train_dir / RUN_FILE
    run_info = json.loads(run_file.read_text()) if run_file.is_file() else {}
    if params.mlflow.enabled and run_info.get("run_id"):
        from pipeline.tracking.tracked_training import log_evaluation

        log_evaluation(run_info["run_id"], metrics, out_dir, tracking_uri=run_info["tracking_uri"])
    if (train_dir, out_dir) == (PIPELINE_TRAIN_DIR, PIPELINE_EVAL_DIR):
        # What `dvc metrics` and `dvc plots` compare across experiments, in git-tracked results/.
        publish_evaluation(train_dir / TRAIN_METRICS_FILE, out_dir / METRICS_FILE, out_dir / PR_CURVE_CSV,
                           out_dir / BLUR_SWEEP_CSV)
        headline = f"headline metrics: {HEADLINE_METRICS}"
    else:
        headline = f"{RESULTS_DIR}/ not updated (outputs not in the pipeline's {PIPELINE_TRAIN_DIR}, {PIPELINE_EVAL_DIR})"
    test = metrics["test"]
    print(f"test F1 {test['f1']:.4f}  IoU {test['iou']:.4f} (image means {test['f1_image_mean']:.4f}, "
          f"{test['iou_image_mean']:.4f})  ODS {test['ods']:.4f}  AP {test['ap']:.4f} ({params.eval.tolerance_rule}); "
          f"{headline}; "
          f"report: {out_dir / 'report.md'} (with its images inside: {out_dir / 'report.html'})")


@command("score")
def _score(params: Params, args: argparse.Namespace) -> None:
    from pipeline.evaluation.folders import score_folders

    metrics = score_folders(Path(args.predictions), Path(args.masks), params.eval)
    if args.json:
        print(json.dumps(metrics))
        return
    ev = params.eval
    print(f"pooled at {ev.threshold:g}: P {metrics['precision']:.4f}  R {metrics['recall']:.4f}  "
          f"F1 {metrics['f1']:.4f}  IoU {metrics['iou']:.4f}; image means: F1 {metrics['f1_image_mean']:.4f}  "
          f"IoU {metrics['iou_image_mean']:.4f}; {ev.tolerance_rule} rule, {ev.tolerance} px: "
          f"ODS {metrics['ods']:.4f}  OIS {metrics['ois']:.4f}  AP {metrics['ap']:.4f}")


@command("register")
def _register(params: Params, args: argparse.Namespace) -> None:
    from registry.register import register_candidate, write_registration

    registration = register_candidate(Path(params.train.out_dir) / RUN_FILE,
                                      Path(params.eval.out_dir) / "metrics.json", params.mlflow.registered_model)
    write_registration(registration, Path(args.output))
    print(f"registered {registration.name} version {registration.version} (run {registration.run_id}) "
          f"with alias '{registration.alias}'")


@command("count-params")
def _count_params(params: Params, args: argparse.Namespace) -> None:
    from pipeline.models.factory import model_label
    from pipeline.tuning import count_parameters
    from pipeline.tuning.build import build_model

    import torch

    # Counting needs the architecture only: no checkpoint has to exist yet, and on the meta device
    # no weights are allocated or initialised, so a ViT-H (640M parameters) counts in a second.
    with torch.device("meta"):
        counts = count_parameters(build_model(params, load_weights=False))
    if args.json:
        print(json.dumps(counts.as_dict()))
    else:
        print(f"{model_label(params)} tuning={params.tuning.method}: "
              f"trainable {counts.trainable:,} of {counts.total:,} ({counts.trainable_percent:.3f}%)")


@command("sweep")
def _sweep(params: Params, args: argparse.Namespace) -> None:
    from search.backends import run_sweep
    from search.config import SweepConfig
    from search.space import load_space

    if args.device:
        # One GPU per worker: `--device cuda:1`, or CUDA_VISIBLE_DEVICES=1 and the default auto.
        params = load_params(args.params, [*args.overrides, f"train.device={args.device}"])
    space = load_space(args.space)
    if args.epochs is not None:
        space = space.with_epochs(args.epochs)
    elif any(item.split("=", 1)[0].strip() == "train.epochs" for item in args.overrides):
        print(f"note: each trial trains the space's {space.epochs} epochs (-S train.epochs does not change that; "
              "use --epochs)", flush=True)
    config = SweepConfig(space=space, base=params, n_trials=args.n_trials, sampler=args.sampler,
                         pruner=args.pruner, study=args.study, storage=args.storage, seed=args.seed,
                         address=args.address, overrides=list(args.overrides))
    run_sweep(args.backend, config)



def _registry_command(name: str) -> Command:
    def run(params: Params, args: argparse.Namespace) -> int | None:
        from registry.commands import HANDLERS

        return HANDLERS[name](params, args)

    return run


@command("recipe")
def _recipe(params: Params, args: argparse.Namespace) -> None:
    from pipeline.recipes import load_recipe

    recipe = load_recipe(args.name)
    if args.dvc_args:
        print(recipe.dvc_args(), end="")
        return
    print(f"{recipe.title}\n(from {recipe.source})\n\n{recipe.table()}\n")
    print(f"run it:  crackops train --recipe {recipe.name}   or   "
          f"crackops recipe {recipe.name} --dvc-args | xargs dvc exp run")


# Promotion, lineage, comparison, prediction and export live in registry/commands.py (handlers and parsers).
for _name in ("promote", "lineage", "compare", "predict", "export"):
    command(_name)(_registry_command(_name))


# One example per subcommand, closing its --help (its first line is the subcommand's summary).
EXAMPLES = {
    "prepare": "crackops prepare -S data.source=datasets/cfd",
    "embed": "crackops embed -S model.family=sam_lite",
    "distill": "crackops distill -S model.family=sam_lite -S distill.epochs=8",
    "train": "crackops train -S train.lr=5e-4 -S train.epochs=2",
    "evaluate": "crackops evaluate -S eval.threshold=0.4 -S 'eval.zero_shot=[]'",
    "score": "crackops score predictions/ data/prepared/test/masks --json -S eval.tolerance_rule=bsds",
    "register": "crackops register --output outputs/register/registered.json",
    "count-params": "crackops count-params -S model.variant=vit_b -S tuning.method=layernorm --json",
    "recipe": "crackops recipe cracksam --dvc-args",
    "sweep": "crackops sweep sac-config3 --n-trials 6",
    "promote": "crackops promote --version 7 --dry-run",
    "lineage": "crackops lineage --alias champion --json",
    "compare": "crackops compare models:/crack-segmenter@champion models:/crack-segmenter@candidate",
    "predict": "crackops predict photos/ 'more/*.jpg' --output masks/",
    "export": "crackops export --model-uri models:/crack-segmenter@champion --format onnx --int8 --output edge/",
}


# Commands whose exit status says more than success (0) or a one-line error (2).
EXIT_STATUS = {
    "predict": ("  0  every image predicted\n"
                "  1  some files could not be read: each is named on stderr and in predictions.json,\n"
                "     every other image was predicted\n"
                "  2  an error stopped the command; once predicting had begun, predictions.json lists what was done"),
}


def package_version() -> str:
    """The installed crackops version; a checkout used through PYTHONPATH without installing has none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crackops")
    except PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def _describe_subcommands(sub: argparse._SubParsersAction) -> None:
    """Give each subcommand's --help its summary as description and its example as epilog."""
    # The summaries are the `help=` texts of the subcommand list; argparse keeps them only there.
    for action in sub._choices_actions:
        parser = sub.choices[action.dest]
        parser.description = action.help[0].upper() + action.help[1:] + "."
        status = f"exit status:\n{EXIT_STATUS[action.dest]}\n\n" if action.dest in EXIT_STATUS else ""
        parser.epilog = f"{status}example:\n  {EXAMPLES[action.dest]}"
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the example on its own line


def build_parser() -> argparse.ArgumentParser:
    from search.backends import BACKENDS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", type=Path, default=None,
                        help="params file (default: params.yaml, or the built-in defaults where there is none)")
    common.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. -S train.lr=5e-4 (repeatable)")
    common.add_argument("--recipe", default=None, metavar="NAME",
                        help="a paper's settings (pipeline/recipes/NAME.yaml: sac, cracksam, lightweight_sam, "
                             "deeplabv3), applied before any -S")
    parser = argparse.ArgumentParser(prog="crackops", description="Crack segmentation with SAM: data, training, evaluation.",
                                     epilog="crackops COMMAND --help describes a command, with an example.")
    parser.add_argument("--version", action="version", version=f"crackops {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", parents=[common], help="validate, split and resize the dataset in data.source")
    for name, text in (("embed", "sam_lite: store the SAM teacher's image embeddings (reused while valid)"),
                       ("distill", "sam_lite: train the TinyViT student on the stored embeddings (MSE)")):
        stage = sub.add_parser(name, parents=[common], help=text)
        stage.add_argument("--no-progress", action="store_true", help="no progress bars")
    train = sub.add_parser("train", parents=[common], help="train the model on the prepared data")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate = sub.add_parser("evaluate", parents=[common], help="score the trained model on test, corruption and zero-shot sets")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    score = sub.add_parser("score", parents=[common],
                           help="score saved probability maps (grayscale PNG, value/255) against masks, as evaluate does")
    score.add_argument("predictions", help="folder of probability maps, stems matching the masks")
    score.add_argument("masks", help="folder of masks (0/1 or 0/255; >= 128 is crack)")
    score.add_argument("--json", action="store_true", help="print every score as one JSON object")
    register = sub.add_parser("register", parents=[common], help="register the evaluated model as 'candidate'")
    register.add_argument("--output", default="outputs/register/registered.json", help="where to record the version")
    count = sub.add_parser("count-params", parents=[common], help="trainable and total parameters")
    count.add_argument("--json", action="store_true", help='print {"trainable": N, "total": M}')
    recipe = sub.add_parser("recipe", parents=[common], help="a paper's settings: its table, or -S lines for dvc exp run")
    recipe.add_argument("name", help="sac, cracksam, lightweight_sam, deeplabv3 (pipeline/recipes/), or a YAML file")
    recipe.add_argument("--dvc-args", action="store_true", help="print one '-S key=value' per line (for xargs dvc exp run)")
    sweep = sub.add_parser("sweep", parents=[common], help="hyperparameter sweep over a search space (resumable)")
    sweep.add_argument("space", help="a shipped space (search/spaces/<name>.yaml, e.g. sac-config3) or a YAML file")
    sweep.add_argument("--backend", choices=list(BACKENDS), default="optuna",
                       help="default: optuna (any number of workers on one --storage); ray: Ray Tune (--address)")
    sweep.add_argument("--n-trials", type=int, default=None,
                       help="complete + pruned trials to reach (default: the drawn grid points, else 20)")
    sweep.add_argument("--sampler", choices=["grid-fraction", "random", "tpe"], default=None,
                       help="default: the space's own")
    sweep.add_argument("--pruner", choices=["none", "median", "asha"], default=None,
                       help="default: none for grid-fraction, median otherwise")
    sweep.add_argument("--study", default=None, help="study name (default: the space's name); reuse it to resume")
    sweep.add_argument("--storage", default="sqlite:///sweeps.db",
                       help="Optuna storage URL (default: sqlite:///sweeps.db; PostgreSQL for several workers)")
    sweep.add_argument("--seed", type=int, default=0, help="grid draw and sampler seed (default: 0)")
    sweep.add_argument("--address", default=None, help="Ray cluster address (ray backend only)")
    sweep.add_argument("--device", default=None,
                       help="this worker's device for its trials (cpu, cuda, cuda:1; sets train.device)")
    sweep.add_argument("--epochs", type=int, default=None,
                       help="epochs per trial (default: the space's `epochs`; -S train.epochs is replaced by it)")
    from registry.commands import add_parsers

    add_parsers(sub, common)  # promote, lineage, compare, predict, export
    _describe_subcommands(sub)
    return parser


def _params_file(given: Path | None) -> Path:
    """Only the implicit params.yaml may be absent: a mistyped --params would train on the defaults."""
    if given is None:
        return DEFAULT_PARAMS_FILE
    if not given.is_file():
        raise ParamsError(f"--params {given}: no such file")
    return given


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.recipe:
            from pipeline.recipes import load_recipe

            args.overrides = [*load_recipe(args.recipe).overrides(), *args.overrides]
        args.params = _params_file(args.params)
        params = load_params(args.params, args.overrides)
        return COMMANDS[args.command](params, args) or 0
    except CrackopsError as error:
        print(f"crackops {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crackops {args.command}: interrupted; finished outputs are untouched", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `crackops lineage | head`: the reader has gone; say nothing more, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        problem = storage_problem(error)
        if problem is None:
            raise
        hint = RERUN_HINTS.get(args.command, "finished outputs are untouched")
        print(f"crackops {args.command}: error: {problem}; free space or fix permissions and rerun ({hint})",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
