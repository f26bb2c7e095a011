"""CPU inference speed and peak memory: SAM ViT-B, the lightweight SAM (sam_lite) and DeepLabV3-ResNet101.

Each (model, size) runs in a fresh subprocess with random weights, batch 1, in eval mode under
``torch.inference_mode``: ``--warmup`` untimed forwards, then timed ones, at least ``--runs``
and until ``--min-seconds`` of timing have passed (so fast models get more samples). Speed is
reported from the best (minimum) and the median time per image: on a shared machine other
processes only ever add time, so the best run is the closest to the model's own cost, and the
median says what a typical call got. Peak memory is the subprocess's maximum resident set size
(``ru_maxrss``), including Python, torch and the weights; the baseline column is the same measure
just before the model is built (interpreter and imports). The 1-minute load average before and
after each measurement is recorded, since it says how contended the CPU was.

    python benchmarks/inference_speed.py [--sizes 1024 256] [--runs 3] [--min-seconds 10] [--threads N]
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
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MODELS = {
    "sam_vit_b": ["model.family=sam", "model.variant=vit_b"],
    "sam_lite": ["model.family=sam_lite", "model.student_checkpoint=null"],  # model.student_stride's default
    "sam_lite_stride32": ["model.family=sam_lite", "model.student_checkpoint=null", "model.student_stride=32"],
    "deeplabv3": ["model.family=deeplabv3"],
}
MAX_RUNS = 50


def time_calls(call: Callable[[], Any], runs: int, warmup: int, min_seconds: float) -> tuple[list[float], Any]:
    """Seconds of each timed ``call()`` after ``warmup`` untimed ones: at least ``runs`` and
    ``min_seconds`` in all (at most MAX_RUNS); also the last call's result."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    result = None
    while len(times) < MAX_RUNS and (len(times) < runs or sum(times) < min_seconds):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return times, result


def measure(name: str, size: int, runs: int, warmup: int, min_seconds: float, threads: int | None) -> dict:
    import torch

    from pipeline.tuning.build import build_model
    from pipeline.params import load_params
    from pipeline.tuning import count_parameters

    if threads:
        torch.set_num_threads(threads)
    params = load_params("missing.yaml", [*MODELS[name], f"data.img_size={size}"])
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # interpreter + imports
    torch.manual_seed(0)
    model = build_model(params, load_weights=False).eval()
    image = torch.rand(1, 3, size, size)
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        times, out = time_calls(lambda: model(image), runs, warmup, min_seconds)
    assert out.shape == (1, 1, size, size), out.shape
    best, median = min(times), statistics.median(times)
    return {
        "model": name, "size": size, "parameters": count_parameters(model).total,
        "best_seconds": round(best, 4), "median_seconds": round(median, 4),
        "images_per_second": round(1.0 / best, 3), "median_images_per_second": round(1.0 / median, 3),
        "runs": len(times), "warmup": warmup, "threads": torch.get_num_threads(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "baseline_rss_mib": round(baseline_kib / 1024),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }


def run_one(name: str, size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", name, "--sizes", str(size), "--runs", str(args.runs),
               "--warmup", str(args.warmup), "--min-seconds", str(args.min_seconds)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name} at {size}px failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def speedups(rows: list[dict], size: int, name: str) -> tuple[float, float] | None:
    base = next((r for r in rows if r["model"] == "sam_vit_b" and r["size"] == size), None)
    row = next((r for r in rows if r["model"] == name and r["size"] == size), None)
    if base is None or row is None:
        return None
    return base["best_seconds"] / row["best_seconds"], base["median_seconds"] / row["median_seconds"]


def table(rows: list[dict]) -> str:
    lines = ["| model | size | parameters | best s/image | images/s (best) | median s/image | runs "
             "| speed-up vs SAM ViT-B (best / median) | peak RSS (MiB) | baseline RSS (MiB) | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = speedups(rows, row["size"], row["model"])
        speedup = f"{ratio[0]:.1f}x / {ratio[1]:.1f}x" if ratio else "-"
        lines.append(f"| {row['model']} | {row['size']} | {row['parameters']:,} | {row['best_seconds']:.3f} | "
                     f"{1.0 / row['best_seconds']:.2f} | {row['median_seconds']:.3f} | {row['runs']} | {speedup} | "
                     f"{row['peak_rss_mib']:,} | {row['baseline_rss_mib']:,} | "
                     f"{row['load_before']:.1f}-{row['load_after']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 256])
    parser.add_argument("--runs", type=int, default=3, help="at least this many timed runs (default 3)")
    parser.add_argument("--min-seconds", type=float, default=10.0,
                        help=f"keep timing until this much time has passed (at most {MAX_RUNS} runs)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.sizes[0], args.runs, args.warmup, args.min_seconds, args.threads)))
        return
    rows = []
    for size in args.sizes:
        for name in args.models:
            rows.append(run_one(name, size, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\nCPU inference, batch 1, random weights, {args.warmup} warm-up + at least {args.runs} timed runs "
          f"(and {args.min_seconds:g}s) per model in a fresh process; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {rows[0]['threads']} torch threads\n")
    print(table(rows))
    for size in args.sizes:
        ratio = speedups(rows, size, "sam_lite")
        if ratio:
            verdict = "meets" if ratio[0] >= 5 else "BELOW"
            print(f"\nsam_lite vs SAM ViT-B at {size}px: {ratio[0]:.1f}x faster on the best run, {ratio[1]:.1f}x on "
                  f"the median ({verdict} the 5x target)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
