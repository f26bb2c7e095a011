"""Load official SAM checkpoints safely, resized to the model's input size."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from pipeline.errors import CheckpointError
from pipeline.models.sam_variants import SAM_VARIANTS


def missing_checkpoint_message(path: Path, variant: str) -> str:
    spec = SAM_VARIANTS.get(variant)
    if spec is None or spec.checkpoint_url is None:
        return (
            f"SAM checkpoint not found: {path}. Variant {variant!r} has no official checkpoint; "
            "leave model.checkpoint empty to start from random weights."
        )
    return (
        f"SAM checkpoint not found: {path}\n"
        f"Download the official {variant} weights ({spec.checkpoint_file}) and point model.checkpoint at it:\n"
        f"  mkdir -p checkpoints && curl -L -o checkpoints/{spec.checkpoint_file} {spec.checkpoint_url}\n"
        f"  crackops ... -S model.checkpoint=checkpoints/{spec.checkpoint_file}"
    )


def read_state_dict(path: str | Path, variant: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint file without unpickling arbitrary objects (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(missing_checkpoint_message(path, variant))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot read SAM checkpoint {path}: {error}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a SAM state dict (expected a mapping of names to tensors)")
    return state


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    # Relative-position tables are 1-D over offsets, so linear interpolation keeps their meaning.
    resized = F.interpolate(table.T.unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized.squeeze(0).T.to(table.dtype)


def resize_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fit position embeddings and relative-position tables of ``state`` to the shapes in ``target``.

    A checkpoint trained at 1024x1024 has a 64x64 position-embedding grid and 127-long relative
    position tables in its global-attention blocks; at 256x256 the model needs 16x16 and 31.
    """
    resized = dict(state)
    for name, tensor in state.items():
        wanted = target.get(name)
        if wanted is None or wanted.shape == tensor.shape:
            continue
        if name.endswith("pos_embed") and tensor.dim() == 4:
            grid = tensor.permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=wanted.shape[1:3], mode="bicubic", align_corners=False)
            resized[name] = grid.permute(0, 2, 3, 1).to(tensor.dtype)
        elif (name.endswith("rel_pos_h") or name.endswith("rel_pos_w")) and tensor.dim() == 2:
            resized[name] = _resize_rel_pos(tensor, wanted.shape[0])
    return resized


def load_sam_checkpoint(sam: Sam, path: str | Path, variant: str, fresh_prefixes: tuple[str, ...] = ()) -> Sam:
    """Load an official checkpoint into ``sam`` (built for any input size); errors name the bad keys.

    Keys starting with one of ``fresh_prefixes`` are left out on both sides and keep ``sam``'s
    random initialisation: ``model.mask_head: class_tokens`` replaces SAM's mask tokens, their
    hypernetwork MLPs and the IoU head (as CrackSAM's ``load_from`` does), so the checkpoint's
    versions of those are neither unexpected keys nor shape mismatches. Every other key must fit.
    """
    def kept(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if not k.startswith(fresh_prefixes)}

    expected = kept(sam.state_dict())
    state = resize_state_dict(kept(read_state_dict(path, variant)), expected)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                details.append(f"{label}: {', '.join(keys[:5])}" + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""))
        raise CheckpointError(f"{path} does not fit SAM {variant}: " + "; ".join(details))
    # strict=False only lets the fresh keys keep their initialisation: every other key was checked above.
    sam.load_state_dict(state, strict=False)
    return sam
