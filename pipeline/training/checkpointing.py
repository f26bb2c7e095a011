"""Resumable training state, written atomically so a killed run resumes from its last whole epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_path


def save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None if there is none; never unpickles arbitrary objects."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
