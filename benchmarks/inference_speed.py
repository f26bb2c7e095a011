"""CPU inference speed and peak memory: SAM ViT-B, the lightweight SAM (sam_lite) and DeepLabV3-ResNet101.

Each (model, size) runs in a fresh subprocess with random weights, batch 1, in eval mode under
``torch.inference_mode``: ``--warmup`` untimed forwards, then ``--runs`` timed ones. Speed is
images per second over the timed runs (their mean); peak memory is the subprocess's maximum
resident set size (``ru_maxrss``), so it includes Python, torch and the weights; the baseline
column is the same measure just before the model is built (interpreter and imports).

    python benchmarks/inference_speed.py [--sizes 1024 256] [--runs 3] [--warmup 1] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MODELS = {
    "sam_vit_b": ["model.family=sam", "model.variant=vit_b"],
    "sam_lite": ["model.family=sam_lite", "model.student_checkpoint=null"],
    "deeplabv3": ["model.family=deeplabv3"],
}


def measure(name: str, size: int, runs: int, warmup: int, threads: int | None) -> dict:
    import torch

    from pipeline.models.factory import build_model
    from pipeline.params import load_params
    from pipeline.tuning import count_parameters

    if threads:
        torch.set_num_threads(threads)
    params = load_params("missing.yaml", [*MODELS[name], f"data.img_size={size}"])
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # interpreter + imports
    torch.manual_seed(0)
    model = build_model(params, load_weights=False).eval()
    image = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        for _ in range(warmup):
            model(image)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            out = model(image)
            times.append(time.perf_counter() - started)
    assert out.shape == (1, 1, size, size), out.shape
    seconds = sum(times) / len(times)
    return {
        "model": name, "size": size, "parameters": count_parameters(model).total,
        "seconds_per_image": round(seconds, 4), "images_per_second": round(1.0 / seconds, 3),
        "min_seconds": round(min(times), 4), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "baseline_rss_mib": round(baseline_kib / 1024),
        "threads": torch.get_num_threads(), "runs": runs, "warmup": warmup,
    }


def run_one(name: str, size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", name, "--sizes", str(size), "--runs", str(args.runs),
               "--warmup", str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name} at {size}px failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| model | size | parameters | s/image | images/s | speed-up vs SAM ViT-B | peak RSS (MiB) | baseline RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {row["size"]: row["seconds_per_image"] for row in rows if row["model"] == "sam_vit_b"}
    for row in rows:
        ratio = base.get(row["size"])
        speedup = f"{ratio / row['seconds_per_image']:.1f}x" if ratio else "-"
        lines.append(f"| {row['model']} | {row['size']} | {row['parameters']:,} | {row['seconds_per_image']:.3f} | "
                     f"{row['images_per_second']:.2f} | {speedup} | {row['peak_rss_mib']:,} | {row['baseline_rss_mib']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 256])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.sizes[0], args.runs, args.warmup, args.threads)))
        return
    rows = []
    for size in args.sizes:
        for name in args.models:
            rows.append(run_one(name, size, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\nCPU inference, batch 1, random weights, {args.warmup} warm-up + {args.runs} timed runs per model "
          f"in a fresh process; {platform.processor() or platform.machine()}, {rows[0]['threads']} threads\n")
    print(table(rows))
    speedups = {row["size"]: next(r for r in rows if r["model"] == "sam_vit_b" and r["size"] == row["size"])
                ["seconds_per_image"] / row["seconds_per_image"]
                for row in rows if row["model"] == "sam_lite" and "sam_vit_b" in args.models}
    for size, speedup in speedups.items():
        print(f"\nsam_lite vs SAM ViT-B at {size}px: {speedup:.1f}x faster "
              f"({'meets' if speedup >= 5 else 'BELOW'} the 5x target)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
