"""A trained model on disk: its resolved params plus its weights as safetensors (no pickle)."""
from __future__ import annotations

from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.errors import CheckpointError
from pipeline.params import Params, load_model_params
from pipeline.tuning.build import build_model

WEIGHTS_FILE = "model.safetensors"
PARAMS_FILE = "params.yaml"


def save_trained_model(model: nn.Module, params: Params, directory: Path) -> None:
    """Write ``params.yaml`` and ``model.safetensors`` into ``directory``, each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    with atomic_path(directory / PARAMS_FILE) as tmp:
        tmp.write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))


def load_trained_model(directory: Path) -> tuple[nn.Module, Params]:
    """Rebuild the architecture from the saved params and load the weights into it."""
    weights, params_file = directory / WEIGHTS_FILE, directory / PARAMS_FILE
    for path in (weights, params_file):
        if not path.is_file():
            raise CheckpointError(f"{path} not found: {directory} is not a trained crackops model")
    params = load_model_params(params_file)
    model = build_model(params, load_weights=False)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match its params: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model, params
