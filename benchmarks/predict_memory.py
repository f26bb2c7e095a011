"""Peak memory of ``crackops predict`` on one photo, by photo size.

The model is the default one (SAM vit_tiny, fully tuned, ``data.img_size`` 256, so 512 px tiles)
trained for one epoch on 12 synthetic images: memory does not depend on how well it was trained.
The photos are JPEGs of 1.5, 6 and 24 megapixels (3:2) tiled from CrackForest images (the
synthetic generator's when ``../shared/data/cfd`` is absent), plus a 64 x 64 one for the fixed cost
(interpreter, torch, MLflow, the model). Each prediction is a fresh process under
``/usr/bin/time -v``; its "Maximum resident set size" is the figure. The last column is what
each photo adds over the 64 x 64 one, per pixel: the image itself is 3 bytes a pixel.

    python benchmarks/predict_memory.py [--megapixels 1.5 6 24] [--checkout DIR] [--workdir DIR]

``--checkout`` measures another checkout's code (e.g. a clone at an older commit) with the same
model and photos, for before/after comparisons.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
CFD = REPO.parent / "shared/data/cfd"
TIME = "/usr/bin/time"


def _env(checkout: Path) -> dict[str, str]:
    # The checkout's own code, and the venv's bin first (as an activated venv would have it).
    return {**os.environ, "PYTHONPATH": str(checkout), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def train_model(workdir: Path) -> Path:
    """The default model trained one epoch on 12 synthetic 256 px images; its folder."""
    from pipeline.data import generate_dataset, prepare_dataset

    model_dir = workdir / "model"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    generate_dataset(workdir / "raw", n_images=12, size=256, seed=0)
    prepare_dataset(workdir / "raw", workdir / "prepared", img_size=256, val_fraction=0.25, test_fraction=0.25, seed=0)
    subprocess.run([sys.executable, "-m", "crackops", "train", "--no-progress",
                    "-S", f"data.prepared_dir={workdir / 'prepared'}", "-S", f"train.out_dir={model_dir}",
                    "-S", "train.epochs=1", "-S", "mlflow.enabled=false"],
                   cwd=workdir, env=_env(REPO), check=True)
    return model_dir


def _source_tiles() -> list[np.ndarray]:
    if CFD.is_dir():
        return [cv2.imread(str(p)) for p in sorted((CFD / "images").iterdir())[:12]]
    from pipeline.data import render_sample

    return [cv2.cvtColor(render_sample(np.random.default_rng(i), 320)[0], cv2.COLOR_RGB2BGR) for i in range(12)]


def make_photo(path: Path, megapixels: float) -> tuple[int, int]:
    """A 3:2 JPEG of about ``megapixels``, tiled from real (or synthetic) crack photos."""
    width = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    height = int(round(width / 1.5))
    tiles = _source_tiles()
    th, tw = tiles[0].shape[:2]
    rows = []
    for r in range(-(-height // th)):
        row = [cv2.resize(tiles[(r * 7 + c) % len(tiles)], (tw, th)) for c in range(-(-width // tw))]
        rows.append(np.concatenate(row, axis=1))
    photo = np.concatenate(rows, axis=0)[:height, :width]
    assert cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return height, width


def peak_rss_mib(checkout: Path, model_dir: Path, photo: Path, out_dir: Path) -> float:
    """Maximum resident set size of one ``crackops predict`` process, in MiB."""
    run = subprocess.run([TIME, "-v", sys.executable, "-m", "crackops", "predict", str(photo),
                          "--model-uri", str(model_dir), "--output", str(out_dir), "--no-progress"],
                         cwd=out_dir.parent, env=_env(checkout), capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"predict {photo} failed ({run.returncode}):\n{run.stderr}")
    kib = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    assert kib, run.stderr
    return int(kib.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", nargs="+", type=float, default=[1.5, 6.0, 24.0])
    parser.add_argument("--checkout", type=Path, default=REPO, help="the code to measure (default: this checkout)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the model and photos here and reuse them (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="predict-memory-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        model_dir = train_model(workdir)
        small = workdir / "photo-64px.jpg"
        cv2.imwrite(str(small), cv2.resize(_source_tiles()[0], (64, 64), interpolation=cv2.INTER_AREA))
        base = peak_rss_mib(args.checkout.resolve(), model_dir, small, workdir / "out-base")
        rows = []
        for mp in args.megapixels:
            photo = workdir / f"photo-{mp:g}mp.jpg"
            height, width = make_photo(photo, mp)
            peak = peak_rss_mib(args.checkout.resolve(), model_dir, photo, workdir / f"out-{mp:g}mp")
            rows.append({"megapixels": mp, "width": width, "height": height, "peak_rss_mib": round(peak),
                         "baseline_rss_mib": round(base),
                         "bytes_per_pixel_over_baseline": round((peak - base) * 2**20 / (width * height), 1)})
    print(f"checkout {args.checkout}; 64x64 photo: {base:,.0f} MiB")
    print("| photo | pixels | peak RSS (MiB) | over 64x64 (MiB) | bytes/pixel over 64x64 |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['megapixels']:g} MP | {row['width']} x {row['height']} | {row['peak_rss_mib']:,} | "
              f"{row['peak_rss_mib'] - row['baseline_rss_mib']:,} | {row['bytes_per_pixel_over_baseline']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
