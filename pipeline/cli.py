"""``crackops``: the command line. Each subcommand is a thin entry point over library code.

Every subcommand reads ``params.yaml`` (``--params`` to choose another file) and takes
``-S key=value`` overrides with dotted keys and YAML-parsed values, like ``dvc exp run -S``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from pipeline.errors import CrackopsError
from pipeline.params import DEFAULT_PARAMS_FILE, Params, load_params

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


@command("train")
def _train(params: Params, args: argparse.Namespace) -> None:
    from pipeline.training.run import train_from_params

    outcome = train_from_params(params, out_dir=Path(params.train.out_dir), progress=not args.no_progress)
    best = outcome.fit.best_val
    print(f"best epoch {outcome.fit.best_epoch + 1}: validation F1 {best['f1']:.4f} "
          f"(P {best['precision']:.4f}, R {best['recall']:.4f}, IoU {best['iou']:.4f}); "
          f"model written to {params.train.out_dir}")


@command("count-params")
def _count_params(params: Params, args: argparse.Namespace) -> None:
    from pipeline.models.factory import build_model
    from pipeline.tuning import count_parameters

    counts = count_parameters(build_model(params))
    if args.json:
        print(json.dumps(counts.as_dict()))
    else:
        print(f"{params.model.family}/{params.model.variant} tuning={params.tuning.method}: "
              f"trainable {counts.trainable:,} of {counts.total:,} ({counts.trainable_percent:.3f}%)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE, help="params file (default: params.yaml)")
    common.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. -S train.lr=5e-4 (repeatable)")
    parser = argparse.ArgumentParser(prog="crackops", description="Crack segmentation with SAM: data, training, evaluation.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", parents=[common], help="validate, split and resize the dataset in data.source")
    train = sub.add_parser("train", parents=[common], help="train the model on the prepared data")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    count = sub.add_parser("count-params", parents=[common], help="trainable and total parameters")
    count.add_argument("--json", action="store_true", help='print {"trainable": N, "total": M}')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
        return COMMANDS[args.command](params, args) or 0
    except CrackopsError as error:
        print(f"crackops {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crackops {args.command}: interrupted; finished outputs are untouched", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
