"""A trained crackops SAM as a checkpoint in the official SAM format, to start other runs from it.

The search benchmark's pretrained setting uses it: a vit_tiny SAM trained on the built-in synthetic
cracks stands in for SAM's pretrained encoder (whose weights cannot be downloaded here), and the
sweep then tunes only its LayerNorm parameters on another dataset, as SAC does::

    crackops train -S mlflow.enabled=false -S train.out_dir=outputs/bench/foundation
    python benchmarks/sam_checkpoint_from_model.py outputs/bench/foundation/model.safetensors \\
        outputs/bench/foundation/sam_vit_tiny_synthetic.pth

The output loads through ``model.checkpoint`` like ``sam_vit_b_01ec64.pth`` (same key names).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.torch import load_file

from pipeline.training.checkpointing import save_state

PREFIX = "sam."  # the prompt-free wrapper keeps segment-anything's Sam under this attribute


def sam_state(model_file: Path) -> dict:
    state = load_file(str(model_file))
    foreign = [name for name in state if not name.startswith(PREFIX)]
    if foreign:
        raise SystemExit(f"{model_file}: not a crackops SAM model (keys outside {PREFIX!r}: {foreign[:3]})")
    return {name[len(PREFIX):]: tensor for name, tensor in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model.safetensors written by `crackops train` (model.family=sam)")
    parser.add_argument("out", type=Path, help="where to write the SAM checkpoint (.pth)")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model}: not found; train a SAM model first (see this script's docstring)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = sam_state(args.model)
    save_state(args.out, state)
    print(f"written: {args.out} ({len(state)} tensors)")


if __name__ == "__main__":
    sys.exit(main())
