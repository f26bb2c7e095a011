"""Training throughput and peak memory per tuning method (SAM ViT-B, 256x256, random weights).

Each method runs in its own subprocess so peak memory is not shared between them. On the CPU the
peak is the process's maximum resident set size; on CUDA it is ``torch.cuda.max_memory_allocated``.

    python benchmarks/train_step.py [--variant vit_b] [--img-size 256] [--batch-size 2] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ("layernorm", "lora", "adapter", "full")


def measure(method: str, variant: str, img_size: int, batch_size: int, steps: int) -> dict:
    import torch

    from pipeline.losses import build_loss
    from pipeline.tuning.build import build_model
    from pipeline.params import load_params
    from pipeline.training.precision import pick_device
    from pipeline.tuning import count_parameters

    device = pick_device()
    params = load_params("missing.yaml", [f"model.variant={variant}", f"data.img_size={img_size}",
                                          f"tuning.method={method}"])
    torch.manual_seed(0)
    model = build_model(params).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = build_loss("bce_lambda_dice", 0.65)
    images = torch.rand(batch_size, 3, img_size, img_size, device=device)
    masks = (torch.rand(batch_size, 1, img_size, img_size, device=device) > 0.95).float()
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> None:
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak_mib = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "method": method, "device": device.type, "trainable": count_parameters(model).trainable,
        "seconds_per_step": round(seconds, 3), "images_per_second": round(batch_size / seconds, 2),
        "peak_memory_mib": round(peak_mib), "model_rss_mib": round(rss_before_kib / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.variant, args.img_size, args.batch_size, args.steps)))
        return
    rows = []
    for method in args.methods:
        out = subprocess.run([sys.executable, __file__, "--one", method, "--variant", args.variant,
                              "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
                              "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\nSAM {args.variant}, {args.img_size}x{args.img_size}, batch {args.batch_size}, "
          f"mean of {args.steps} steps after one warm-up, device {rows[0]['device']}\n")
    print("| method | trainable | s/step | images/s | peak memory (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['method']} | {row['trainable']:,} | {row['seconds_per_step']} | "
              f"{row['images_per_second']} | {row['peak_memory_mib']} |")
    by_method = {row["method"]: row for row in rows}
    if "layernorm" in by_method and "full" in by_method:
        ln, full = by_method["layernorm"], by_method["full"]
        ok = ln["seconds_per_step"] < full["seconds_per_step"] and ln["peak_memory_mib"] < full["peak_memory_mib"]
        print(f"\nLayerNorm tuning cheaper than full tuning in time and memory: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
