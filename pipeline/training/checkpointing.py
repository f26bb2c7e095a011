"""Resumable training state, written atomically so a killed run resumes from its last whole epoch."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_path


def save_state(path: Path, state: dict[str, Any]) -> None:
    # Through a Python file object, so that a full disk surfaces as an OSError (atomic_path names
    # the file); writing to a path, torch reports only "unexpected pos ...".
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(state, file)


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None if there is none; never unpickles arbitrary objects.

    Resume state is a cache: an unreadable file (truncated by a full disk or a cut-short copy) is
    deleted with a warning naming it, so the run starts over instead of failing on every rerun.
    """
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - zip, EOF and unpickling errors all mean the same: unreadable
        print(f"warning: cannot read resume state {path}; discarding it and starting training over",
              file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
        return None


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
