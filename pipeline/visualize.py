"""Overlay panels (image | ground truth | prediction) for reports, MLflow artifacts and predict."""
from __future__ import annotations

import numpy as np

# Cyan stands out on grey pavement and on red or beige masonry alike.
CRACK_RGB = np.array([0, 255, 255], dtype=np.float32)


def tint(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``image`` (HxWx3 uint8 RGB) with ``mask`` (HxW, nonzero = crack) painted cyan."""
    out = image.astype(np.float32).copy()
    where = mask.astype(bool)
    out[where] = (1 - alpha) * out[where] + alpha * CRACK_RGB
    return out.clip(0, 255).astype(np.uint8)


def overlay_panel(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray) -> np.ndarray:
    """Side by side: the image, the ground truth in cyan (if known), the prediction in cyan."""
    panels = [image] + ([tint(image, truth)] if truth is not None else []) + [tint(image, prediction)]
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    joined = [panels[0]]
    for panel in panels[1:]:
        joined += [gap, panel]
    return np.concatenate(joined, axis=1)
