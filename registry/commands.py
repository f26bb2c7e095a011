"""``crackops promote | lineage | compare | predict | export``: argument parsers and thin handlers.

Heavy imports (MLflow, torch) happen inside the handlers, so building the parser stays cheap.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import CrackopsError
from pipeline.params import Params

Handler = Callable[[Params, argparse.Namespace], "int | None"]
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register a handler; MLflow errors (server down, bad URI) become one-line CrackopsErrors."""
    def register(function: Handler) -> Handler:
        @functools.wraps(function)
        def wrapped(params: Params, args: argparse.Namespace) -> int | None:
            from mlflow.exceptions import MlflowException

            try:
                return function(params, args)
            except MlflowException as error:
                raise CrackopsError(f"MLflow: {error.message}") from None

        HANDLERS[name] = wrapped
        return wrapped

    return register


def _client(params: Params) -> Any:
    """The client of the params' tracking store, also made MLflow's default: resolving a
    ``models:/`` URI to its artifacts asks the default registry (the tracking store unless set),
    whatever URI is passed along."""
    import mlflow

    from pipeline.tracking.setup import resolve_tracking_uri

    uri = resolve_tracking_uri(params.mlflow)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def _version_args(parser: argparse.ArgumentParser, default_alias: str) -> None:
    parser.add_argument("--model", default=None, help="registered model (default: mlflow.registered_model)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", default=None, help="a version number")
    which.add_argument("--alias", default=None, help=f"an alias (default: {default_alias})")


@handler("promote")
def promote_command(params: Params, args: argparse.Namespace) -> int:
    from pipeline.atomic import write_json
    from registry.promote import (SuiteEvaluator, promote, promotion_json, render_promotion, require_registered,
                                  rollback)
    from registry.versions import resolve_version

    client = _client(params)
    name = args.model or params.mlflow.registered_model
    if args.rollback:
        if args.version or args.alias or args.dry_run:
            raise CrackopsError("--rollback takes no --version, --alias or --dry-run: it restores previous-champion")
        done = rollback(client, name, args.reason)
        demoted = f" (version {done.demoted} tagged promotion.rolled_back)" if done.demoted else ""
        print(f"{name}: champion -> version {done.restored}{demoted}; previous-champion removed")
        return 0
    # Checked before the evaluator reads any data; promote() checks again.
    version = str(require_registered(resolve_version(client, name, args.version, args.alias)).version)
    evaluator = SuiteEvaluator(client, name, params, progress=not args.no_progress)
    result = promote(client, name, version, params.promote, evaluator, dry_run=args.dry_run)
    print(render_promotion(result))
    if args.output:
        write_json(Path(args.output), promotion_json(result, evaluator.data))
    return 0 if result.decision is None or result.decision.passed else 1


@handler("lineage")
def lineage_command(params: Params, args: argparse.Namespace) -> None:
    import json

    from registry.lineage import render_lineage, version_lineage
    from registry.versions import CHAMPION, resolve_version

    client = _client(params)
    name = args.model or params.mlflow.registered_model
    version = resolve_version(client, name, args.version, args.alias or (None if args.version else CHAMPION))
    lineage = version_lineage(client, version)
    print(json.dumps(lineage, indent=2) if args.json else render_lineage(lineage, all_params=args.all_params))


@handler("compare")
def compare_command(params: Params, args: argparse.Namespace) -> None:
    from pipeline.atomic import write_text
    from registry.compare import compare

    markdown = compare(_client(params), list(args.refs), force=args.force)
    print(markdown, end="")
    if args.output:
        write_text(Path(args.output), "# Model comparison\n\n" + markdown)
        print(f"written to {args.output}", file=sys.stderr)


# `crackops predict`'s exit status when some images could not be read and the others were predicted.
PREDICT_PARTIAL = 1


@handler("predict")
def predict_command(params: Params, args: argparse.Namespace) -> int | None:
    from pipeline.inference.predict import SUMMARY_FILE, collect_images, predict_images
    from pipeline.training.precision import pick_device
    from registry.export import load_predictor

    if args.tile is not None and args.tile < 16:
        raise CrackopsError(f"--tile must be at least 16 pixels, got {args.tile}")
    if args.overlap is not None and not 0 <= args.overlap < (args.tile or sys.maxsize):
        raise CrackopsError(f"--overlap must be >= 0 and smaller than --tile, got {args.overlap}")
    paths = collect_images(list(args.images))  # fails on a bad path before any download
    uri = args.model_uri or f"models:/{params.mlflow.registered_model}@champion"
    precision = ("int8" if args.int8 else "fp32") if args.format == "onnx" else None
    if args.int8 and args.format != "onnx":
        raise CrackopsError("--int8 runs the INT8 ONNX export: add --format onnx")
    with tempfile.TemporaryDirectory(prefix="crackops-predict-") as tmp:
        model, trained = load_predictor(uri, Path(tmp), _client(params).tracking_uri, precision)
    if hasattr(model, "to"):  # a PyTorch model; an ONNX graph runs on onnxruntime's CPU provider
        model.to(pick_device())
        runtime = "PyTorch"
    else:
        runtime = f"onnxruntime, {model.path.name}"
    report = predict_images(model, trained, paths, Path(args.output), threshold=args.threshold, tile=args.tile,
                            overlap=args.overlap, progress=not args.no_progress)
    print(f"{len(report.predictions)} masks and overlays written to {args.output} (model {uri}, {runtime})")
    if not report.failed:
        return None
    # Last, after any progress output: one line per file, so they are easy to find and to grep.
    print(f"crackops predict: {len(report.failed)} of {len(paths)} images could not be read "
          f"(also listed in {Path(args.output) / SUMMARY_FILE}):", file=sys.stderr)
    for failure in report.failed:
        print(f"crackops predict: cannot read {failure.image}: {failure.reason}", file=sys.stderr)
    return PREDICT_PARTIAL


@handler("export")
def export_command(params: Params, args: argparse.Namespace) -> None:
    from pipeline.export.export import ExportSettings, export_model
    from registry.export import attach_export, export_source
    from registry.versions import load_model_uri

    uri = args.model_uri or f"models:/{params.mlflow.registered_model}@champion"
    client = _client(params)
    with tempfile.TemporaryDirectory(prefix="crackops-export-") as tmp:
        model, trained = load_model_uri(uri, Path(tmp), client.tracking_uri)
    settings = ExportSettings(int8_method=args.int8_method if args.int8 else None,
                              parity_images=args.parity_images, calibration_images=args.calibration_images)
    output = Path(args.output)
    report = export_model(model, trained, output, Path(params.data.prepared_dir), settings,
                          export_source(client, uri), say=lambda line: print(line, flush=True))
    files = report.description["files"]
    for precision, entry in files.items():
        print(f"{precision}: {output / entry['file']} ({entry['bytes'] / 1e6:.1f} MB)")
    logged = {} if args.no_attach else attach_export(client, uri, output, list(files))
    for precision, logged_uri in logged.items():
        print(f"attached to {uri}: {logged_uri} (serve: mlflow models serve -m {logged_uri} --env-manager local)")
    if not logged:
        print(f"described in {output / 'export.json'}; not attached to a registered version"
              + (" (--no-attach)" if args.no_attach else f" ({uri} is not models:/NAME@ALIAS or models:/NAME/V)"))


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The registry subcommands, added to ``crackops``' subparsers."""
    promote = sub.add_parser("promote", parents=[common],
                             help="evaluate the candidate against the champion; move 'champion' if the gate passes")
    _version_args(promote, "candidate")
    promote.add_argument("--dry-run", action="store_true", help="evaluate and print the table; change nothing")
    promote.add_argument("--rollback", action="store_true",
                         help="champion <- previous-champion (no evaluation); the demoted version is tagged")
    promote.add_argument("--reason", default="", help="why, recorded on the demoted version (with --rollback)")
    promote.add_argument("--output", default=None, help="also write the decision as JSON to this file")
    promote.add_argument("--no-progress", action="store_true", help="no progress bars")

    lineage = sub.add_parser("lineage", parents=[common],
                             help="a version's training run, params, git commit, data hash and sweep parent")
    _version_args(lineage, "champion")
    lineage.add_argument("--json", action="store_true", help="print the chain as JSON (every param)")
    lineage.add_argument("--all-params", action="store_true", help="list every logged param, not the headline ones")

    compare = sub.add_parser("compare", parents=[common], help="side-by-side scores of runs and model versions")
    compare.add_argument("refs", nargs="+", metavar="RUN_OR_VERSION",
                         help="run id, name/version, models:/name/version or models:/name@alias")
    compare.add_argument("--output", default=None, help="also write the Markdown table to this file")
    compare.add_argument("--force", action="store_true",
                         help="compare models scored on different test data (a warning heads the table)")

    predict = sub.add_parser("predict", parents=[common], help="masks and overlays for images, folders or globs")
    predict.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    predict.add_argument("--model-uri", default=None,
                         help="models:/NAME@ALIAS, models:/NAME/V, runs:/ID/model or a model folder "
                              "(default: models:/<mlflow.registered_model>@champion)")
    predict.add_argument("--output", required=True, help="folder for <stem>_mask.png (full size) and <stem>_overlay.png (scaled to 4096 px at most)")
    predict.add_argument("--tile", type=int, default=None,
                         help="images larger than this (pixels, either side) go in tiles (default: 2 x img_size)")
    predict.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default: tile / 4)")
    predict.add_argument("--threshold", type=float, default=None, help="default: the model's eval.threshold")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.add_argument("--format", choices=["pytorch", "onnx"], default="pytorch",
                         help="onnx: run the version's ONNX export (crackops export) with onnxruntime; an export "
                              "folder or a logged export runs as ONNX whatever this says")
    predict.add_argument("--int8", action="store_true", help="with --format onnx: the INT8 graph")

    export = sub.add_parser("export", parents=[common],
                            help="ONNX (and INT8) files of a model for phones and edge boxes, checked against PyTorch")
    export.add_argument("--model-uri", default=None,
                        help="models:/NAME@ALIAS, models:/NAME/V, runs:/ID/model or a model folder "
                             "(default: models:/<mlflow.registered_model>@champion)")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="the file format (onnx)")
    export.add_argument("--output", required=True, help="folder for model.onnx, model.int8.onnx, params.yaml, export.json")
    export.add_argument("--int8", action="store_true", help="also an INT8 copy (onnxruntime quantisation)")
    export.add_argument("--int8-method", choices=["auto", "static", "dynamic"], default="auto",
                        help="static: all operators in int8, activation ranges calibrated on training images (for "
                             "convolutional models: DeepLabV3); dynamic: the matrix products in int8 with activation "
                             "ranges at run time, other weights stored int8 (for transformers: SAM, sam_lite; no "
                             "calibration); auto (default): dynamic when most weights are in matrix products")
    export.add_argument("--calibration-images", type=int, default=16,
                        help="training images that calibrate static INT8 (default: 16)")
    export.add_argument("--parity-images", type=int, default=4,
                        help="test images the ONNX probabilities are compared with PyTorch's on (default: 4)")
    export.add_argument("--no-attach", action="store_true",
                        help="do not log the export to the registered version's run")
