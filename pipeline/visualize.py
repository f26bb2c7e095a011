"""Overlay panels (image | ground truth | prediction) for reports, MLflow artifacts and predict."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Colour:
    """A mask colour: the RGB the panels are tinted with and the word legends use for it."""

    name: str
    rgb: tuple[int, int, int]


# Cyan stands out on grey pavement and on red or beige masonry alike. Truth and prediction share it:
# they sit in separate panels side by side, so one colour makes them easiest to compare.
TRUTH_COLOUR = Colour("cyan", (0, 255, 255))
PREDICTION_COLOUR = Colour("cyan", (0, 255, 255))


def tint(image: np.ndarray, mask: np.ndarray, colour: Colour = PREDICTION_COLOUR, alpha: float = 0.6) -> np.ndarray:
    """``image`` (HxWx3 uint8 RGB) with ``mask`` (HxW, nonzero = crack) painted in ``colour``."""
    out = image.astype(np.float32).copy()
    where = mask.astype(bool)
    out[where] = (1 - alpha) * out[where] + alpha * np.array(colour.rgb, dtype=np.float32)
    return out.clip(0, 255).astype(np.uint8)


def overlay_panel(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray) -> np.ndarray:
    """Side by side: the image, the ground truth (if known) and the prediction, as ``panel_legend`` says."""
    panels = [image] + ([tint(image, truth, TRUTH_COLOUR)] if truth is not None else [])
    panels.append(tint(image, prediction, PREDICTION_COLOUR))
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    joined = [panels[0]]
    for panel in panels[1:]:
        joined += [gap, panel]
    return np.concatenate(joined, axis=1)


def panel_legend(threshold: float, with_truth: bool = True) -> str:
    """The one-line key to ``overlay_panel``'s panels, naming the colours they are drawn in."""
    truth = f" | ground truth ({TRUTH_COLOUR.name})" if with_truth else ""
    return f"Each panel: image{truth} | prediction at threshold {threshold:g} ({PREDICTION_COLOUR.name})."
