"""Edge deployment figures: file size, CPU seconds per image, peak memory and test F1 of each model
as eager PyTorch, onnxruntime FP32 and onnxruntime INT8 (``crackops export``'s files).

For each model and size the FP32 and INT8 graphs are made with the code ``crackops export`` runs
(``pipeline.export``), INT8 by ``--int8-method`` (``auto``: dynamic for transformers, static for
convolutional networks; static calibrates on training images of ``data.prepared_dir``,
``--calibration-images``, ``--random-calibration-images`` for random-initialised models). Each
(model, size, runtime) is then timed in a fresh subprocess with the same protocol as
``benchmarks/inference_speed.py``: batch 1, ``--warmup`` untimed runs, then
at least ``--runs`` timed ones and ``--min-seconds`` of timing; best and median seconds per image;
peak memory is the subprocess's peak resident set, VmHWM (Python, the runtime and the weights included).
Eager PyTorch and onnxruntime both get ``--threads`` threads. With ``--rounds R`` the three runtimes
are also loaded side by side in one process and timed in turn, R rounds of ``--min-seconds``
each; the table's seconds and speed-ups are then those (robust to a machine whose speed drifts).

Models are random-initialised (no pretrained weights can be downloaded here), except those given
with ``--trained NAME=FOLDER`` (a ``crackops train`` output): these are exported with
``crackops export`` itself and their test F1 (pooled, at the model's threshold, the prepared test
split) is measured for each runtime at their own input size.

    python benchmarks/edge_export.py [--models sam_lite sam_vit_b deeplabv3] [--sizes 1024 256]
        [--trained sam_lite=outputs/bench-lite] [--int8-method auto] [--rounds 5] [--threads 2]
        [--work /tmp/edge-bench] [--json rows.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from inference_speed import time_calls  # noqa: E402 - the same timing protocol (benchmarks/ is the script's folder)

MODELS = {
    "sam_lite": ["model.family=sam_lite", "model.student_checkpoint=null"],
    "sam_vit_b": ["model.family=sam", "model.variant=vit_b", "tuning.method=layernorm"],
    "deeplabv3": ["model.family=deeplabv3"],
}
RUNTIMES = ("eager", "onnx_fp32", "onnx_int8")
# Static calibration keeps every activation of an image: SAM ViT-B at 1024 px (4096 x 4096
# attention maps in its global blocks) needs more than the 24 GiB here (--int8-method auto picks
# dynamic for it anyway).
# Lightweight-SAM study, Table 3 (weight files; the distilled model on a Kirin 970 phone CPU).
STUDY_TABLE_3 = ("study (Table 3): SAM ViT-B 404 MB, ViT-L 1230 MB, ViT-H 2665 MB, distilled model 70 MB; "
                 "distilled model on an arm phone CPU (Kirin 970) 2.245 s per 1024x1024 image")


def _params(name: str, size: int, prepared: str):
    from pipeline.params import load_params

    return load_params("missing.yaml", [*MODELS[name], f"data.img_size={size}", f"data.prepared_dir={prepared}",
                                        "mlflow.enabled=false"])


def _calibration(prepared: Path, size: int, count: int) -> list:
    """Training images of the prepared data at ``size`` (resized as predict resizes)."""
    from pipeline.export.checks import load_split
    from pipeline.export.export import at_input_size, evenly_spread

    return at_input_size(evenly_spread(load_split(prepared, "train").images, count), size)


def random_folder(work: Path, name: str, size: int, int8_method: str) -> Path:
    """Where :func:`build_files` writes a random-initialised model's files."""
    return work / f"{name}-{size}-{int8_method}"


def build_files(name: str, size: int, work: Path, prepared: Path, calibration: int, int8_method: str) -> dict:
    """model.safetensors, model.onnx and model.int8.onnx of a random-initialised model in ``work``."""
    import torch

    from pipeline.export.onnx_graph import export_onnx
    from pipeline.export.quantize import quantize_int8, resolve_method
    from pipeline.training.trained import save_trained_model
    from pipeline.tuning.build import build_model

    folder = random_folder(work, name, size, int8_method)
    if not (folder / "model.int8.onnx").is_file():
        torch.manual_seed(0)
        params = _params(name, size, str(prepared))
        model = build_model(params, load_weights=False).eval()
        save_trained_model(model, params, folder)
        started = time.perf_counter()
        export_onnx(model, size, folder / "model.onnx", name)
        exported = time.perf_counter() - started
        method = resolve_method(folder / "model.onnx", int8_method)  # type: ignore[arg-type]
        # Random weights: the calibration sets the speed-relevant graph, not accuracy; one image at
        # 1024 px keeps the calibrator's activations (all of them, per image) within memory.
        count = calibration if size <= 512 else 1
        settings = quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", method,
                                 _calibration(prepared, size, count) if method == "static" else [])
        (folder / "timing.json").write_text(json.dumps({"export_seconds": round(exported, 1),
                                                        "quantize_seconds": round(time.perf_counter() - started - exported, 1),
                                                        "int8": settings}))
    return {"folder": str(folder), **json.loads((folder / "timing.json").read_text())}


def export_trained(folder: Path, work: Path, prepared: Path, calibration: int, int8_method: str) -> Path:
    """``crackops export --int8`` of a trained model folder (the command users run)."""
    out = work / f"trained-{folder.name}-{int8_method}"
    if not (out / "export.json").is_file():
        command = [sys.executable, "-m", "crackops", "export", "--model-uri", str(folder), "--int8", "--no-attach",
                   "--int8-method", int8_method,
                   "--calibration-images", str(calibration), "--output", str(out), "-S", f"data.prepared_dir={prepared}"]
        subprocess.run(command, check=True, cwd=ROOT)
    return out


def file_sizes(folder: Path) -> dict:
    names = {"safetensors": "model.safetensors", "onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx"}
    return {key: round((folder / file).stat().st_size / 1e6, 1) for key, file in names.items() if (folder / file).is_file()}


def peak_rss_mib() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over an exec, so
    a child of the parent that exported a model would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def load_runtime(folder: Path, runtime: str, threads: int):
    """The segmenter ``predict`` would run for ``runtime`` of a model folder, and its params."""
    if runtime == "eager":
        from pipeline.inference.probabilities import TorchSegmenter
        from pipeline.training.trained import load_trained_model

        model, params = load_trained_model(folder)
        return TorchSegmenter(model), params
    from pipeline.inference.onnx_segmenter import OnnxSegmenter
    from pipeline.params import load_model_params

    graph = folder / ("model.onnx" if runtime == "onnx_fp32" else "model.int8.onnx")
    return OnnxSegmenter(graph, threads), load_model_params(folder / "params.yaml")


def measure(folder: Path, runtime: str, size: int, runs: int, warmup: int, min_seconds: float, threads: int,
            f1_prepared: str | None) -> dict:
    """One runtime of one model folder, in this (fresh) process: time per image, peak memory, F1."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    baseline_mib = peak_rss_mib()
    segmenter, params = load_runtime(folder, runtime, threads)
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        times, _ = time_calls(lambda: segmenter.probabilities(image), runs, warmup, min_seconds)
    row = {"runtime": runtime, "best_seconds": round(min(times), 4), "median_seconds": round(statistics.median(times), 4),
           "runs": len(times), "threads": threads,
           "peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline_mib,
           "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    if f1_prepared:
        from pipeline.export.checks import load_split, pooled_f1

        with torch.inference_mode():
            row["test_f1"] = round(pooled_f1(segmenter, load_split(Path(f1_prepared), "test"), params.data.img_size,
                                             params.eval.threshold), 4)
    return row


def measure_interleaved(folder: Path, size: int, rounds: int, block_seconds: float, threads: int) -> dict:
    """Seconds per image of the three runtimes loaded side by side in this process and timed in
    turn, ``rounds`` times: ``block_seconds`` of calls each (after one untimed call, which lets
    the previous runtime's threads settle). The ratios then compare calls minutes apart at most,
    which a shared machine whose speed drifts needs: timed one process after the other, the same
    graph ran 0.033 s and 0.048 s per image on the development VM within half an hour."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    segmenters = {runtime: load_runtime(folder, runtime, threads)[0] for runtime in RUNTIMES}
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
    with torch.inference_mode():
        for _ in range(rounds):
            for runtime, segmenter in segmenters.items():
                block, _ = time_calls(lambda: segmenter.probabilities(image), 2, 1, block_seconds)
                times[runtime] += block
    return {runtime: {"best_seconds": round(min(t), 4), "median_seconds": round(statistics.median(t), 4),
                      "runs": len(t), "rounds": rounds} for runtime, t in times.items()}


def run_interleaved(folder: Path, size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--interleaved", str(folder), "--sizes", str(size), "--rounds",
               str(args.rounds), "--min-seconds", str(args.min_seconds), "--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{folder} interleaved timing at {size}px failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_one(folder: Path, runtime: str, size: int, args: argparse.Namespace, f1: bool) -> dict:
    command = [sys.executable, __file__, "--one", str(folder), runtime, "--sizes", str(size), "--runs", str(args.runs),
               "--warmup", str(args.warmup), "--min-seconds", str(args.min_seconds), "--threads", str(args.threads)]
    if f1:
        command += ["--f1-prepared", str(args.prepared)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{folder} {runtime} at {size}px failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| model | size | weights | INT8 | file MB: safetensors / ONNX FP32 / INT8 | s/image best (median): eager | "
             "ONNX FP32 | ONNX INT8 | speed-up vs eager, best: FP32 / INT8 | peak RSS MiB: eager / FP32 / INT8 | "
             "test F1: eager / FP32 / INT8 |",
             "|---|---:|---|---|---|---:|---:|---:|---|---|---|"]
    for row in rows:
        by = {r["runtime"]: r for r in row["runtimes"]}
        sizes = row["files"]
        speed = {k: f"{by[k]['best_seconds']:.3f} ({by[k]['median_seconds']:.3f})" if k in by else "-" for k in RUNTIMES}
        ratio = " / ".join(f"{by['eager']['best_seconds'] / by[k]['best_seconds']:.2f}x" if k in by and "eager" in by
                           else "-" for k in RUNTIMES[1:])
        rss = " / ".join(f"{by[k]['peak_rss_mib']:,}" if k in by else "-" for k in RUNTIMES)
        f1 = " / ".join(f"{by[k]['test_f1']:.4f}" if "test_f1" in by.get(k, {}) else "-" for k in RUNTIMES)
        files = " / ".join(f"{sizes[k]:.1f}" if k in sizes else "-" for k in ("safetensors", "onnx_fp32", "onnx_int8"))
        lines.append(f"| {row['model']} | {row['size']} | {row['weights']} | {row.get('int8', 'static')} | {files} | "
                     f"{speed['eager']} | "
                     f"{speed['onnx_fp32']} | {speed['onnx_int8']} | {ratio} | {rss} | {f1} |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """The issue's targets for sam_lite: FP32 >= 1.5x eager, INT8 >= 2.5x with F1 within 0.01, INT8 file <= 1/4."""
    out = []
    for row in rows:
        if not row["model"].startswith("sam_lite"):
            continue
        by = {r["runtime"]: r for r in row["runtimes"]}
        fp32 = by["eager"]["best_seconds"] / by["onnx_fp32"]["best_seconds"]
        int8 = by["eager"]["best_seconds"] / by["onnx_int8"]["best_seconds"]
        ratio = row["files"]["onnx_int8"] / row["files"]["onnx_fp32"]
        text = (f"{row['model']} {row['size']}px ({row['weights']}): FP32 {fp32:.2f}x eager "
                f"({'meets' if fp32 >= 1.5 else 'BELOW'} 1.5x), INT8 {int8:.2f}x ({'meets' if int8 >= 2.5 else 'BELOW'} "
                f"2.5x), INT8 file {ratio:.2f} of FP32 ({'meets' if ratio <= 0.25 else 'ABOVE'} 0.25)")
        if "test_f1" in by.get("onnx_int8", {}):
            change = by["onnx_int8"]["test_f1"] - by["onnx_fp32"]["test_f1"]
            text += f", INT8 F1 change {change:+.4f} ({'meets' if abs(change) <= 0.01 else 'OUTSIDE'} 0.01)"
        out.append(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 256])
    parser.add_argument("--trained", nargs="*", default=[], metavar="NAME=FOLDER",
                        help="trained models (crackops train outputs), exported with crackops export; F1 measured")
    parser.add_argument("--prepared", type=Path, default=ROOT / "data/prepared",
                        help="prepared data: INT8 calibration (train) and F1 (test); default data/prepared")
    parser.add_argument("--int8-method", choices=["auto", "static", "dynamic"], default="auto",
                        help="crackops export's --int8-method (auto: dynamic for transformers, static for CNNs)")
    parser.add_argument("--calibration-images", type=int, default=16, help="static INT8 calibration of trained models")
    parser.add_argument("--random-calibration-images", type=int, default=4,
                        help="the same for random-initialised models (their accuracy is not measured)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path("/tmp/crackops-edge-bench"),
                        help="where the files are written (reused by a rerun)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--rounds", type=int, default=0,
                        help="time the three runtimes side by side in one process, in turn, this many rounds of "
                             "--min-seconds each; the table's seconds and speed-ups are then these (peak memory "
                             "and F1 still come from one process per runtime). 0: one process per runtime only")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--interleaved", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--f1-prepared", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = measure(Path(args.one[0]), args.one[1], args.sizes[0], args.runs, args.warmup, args.min_seconds,
                      args.threads, args.f1_prepared)
        print(json.dumps(row))
        return
    if args.interleaved:
        print(json.dumps(measure_interleaved(Path(args.interleaved), args.sizes[0], args.rounds, args.min_seconds,
                                             args.threads)))
        return
    if args.build:
        print(json.dumps(build_files(args.build[0], int(args.build[1]), args.work, args.prepared,
                                     args.random_calibration_images, args.int8_method)))
        return
    if not (args.prepared / "train" / "images").is_dir():
        raise SystemExit(f"{args.prepared} has no prepared train split: run `crackops prepare` (or dvc repro) first")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(name, size, None) for size in args.sizes for name in args.models]
    for item in args.trained:
        name, _, folder = item.partition("=")
        jobs.append((name, None, Path(folder)))
    for name, size, trained in jobs:
        if trained is None:
            # In a subprocess: the parent stays small, so it neither runs out of memory nor
            # inflates the children's measurements.
            subprocess.run([sys.executable, __file__, "--build", name, str(size), "--work", str(args.work),
                            "--prepared", str(args.prepared), "--int8-method", args.int8_method,
                            "--random-calibration-images", str(args.random_calibration_images)], check=True)
            folder, weights = random_folder(args.work, name, size, args.int8_method), "random"
            int8 = json.loads((folder / "timing.json").read_text()).get("int8", {"method": "static"})["method"]
        else:
            folder = export_trained(trained, args.work, args.prepared, args.calibration_images, args.int8_method)
            (folder / "model.safetensors").unlink(missing_ok=True)
            (folder / "model.safetensors").symlink_to((trained / "model.safetensors").resolve())
            from pipeline.params import load_model_params

            size, weights = load_model_params(folder / "params.yaml").data.img_size, f"trained ({trained})"
            int8 = json.loads((folder / "export.json").read_text())["files"]["int8"]["quantization"]["method"]
        runtimes = [run_one(folder, runtime, size, args, f1=trained is not None) for runtime in RUNTIMES]
        if args.rounds:
            side_by_side = run_interleaved(folder, size, args)
            for row in runtimes:
                # The isolated process's times stay in the JSON; the table shows the side-by-side ones.
                row["isolated"] = {key: row[key] for key in ("best_seconds", "median_seconds", "runs")}
                row.update(side_by_side[row["runtime"]])
        rows.append({"model": name, "size": size, "weights": weights, "int8": int8, "files": file_sizes(folder),
                     "runtimes": runtimes})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    timing = (f"the three runtimes side by side in one process, {args.rounds} rounds of {args.min_seconds:g}s each in "
              "turn (peak memory and F1: one fresh process per runtime)" if args.rounds else
              f"{args.warmup} warm-up + at least {args.runs} timed runs and {args.min_seconds:g}s per runtime, "
              "each in a fresh process")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.threads} threads for torch "
          f"and onnxruntime; batch 1; {timing}\n")
    print(table(rows))
    print()
    for line in verdicts(rows):
        print(line)
    print(STUDY_TABLE_3)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
