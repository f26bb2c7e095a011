"""Device and mixed-precision choices: bf16 (or fp16 with a scaler) on CUDA, fp32 on the CPU."""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch

from pipeline.errors import CrackopsError


class DeviceError(CrackopsError):
    """``train.device`` names a device this process cannot see."""


def pick_device(name: str = "auto") -> torch.device:
    """``train.device``: ``auto`` is the first visible GPU, else the CPU; ``cuda:1`` the second GPU
    (a worker given one GPU by ``CUDA_VISIBLE_DEVICES`` sees it as ``cuda``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if device.index is not None and device.index >= visible or not visible:
            raise DeviceError(f"train.device is {name} but this process sees {visible} CUDA device(s); "
                              "check CUDA_VISIBLE_DEVICES or set train.device: auto")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``auto``/``fp32``/``bf16``/``fp16``), or None for fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def enable_tf32() -> None:
    # TF32 matmuls are ~free accuracy-wise for segmentation and much faster on Ampere and later.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
