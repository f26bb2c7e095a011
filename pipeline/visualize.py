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


# Rows tinted at a time: the float arithmetic works on one band, never on a whole large photo.
_TINT_ROWS = 256
_GAP = 4  # white pixels between panels


def tint(image: np.ndarray, mask: np.ndarray, colour: Colour = PREDICTION_COLOUR, alpha: float = 0.6,
         out: np.ndarray | None = None) -> np.ndarray:
    """``image`` (HxWx3 uint8 RGB) with ``mask`` (HxW, nonzero = crack) painted in ``colour``.

    Written into ``out`` (HxWx3 uint8, e.g. a slice of a panel) when given, so the caller's array
    is the only full-size copy.
    """
    if out is None:
        out = image.copy()
    else:
        out[...] = image
    paint = alpha * np.array(colour.rgb, dtype=np.float32)
    for start in range(0, image.shape[0], _TINT_ROWS):
        rows = slice(start, start + _TINT_ROWS)
        where = mask[rows].astype(bool)
        band = out[rows]  # a view: assigning through it paints ``out``
        band[where] = ((1 - alpha) * image[rows][where].astype(np.float32) + paint).clip(0, 255).astype(np.uint8)
    return out


def overlay_panel(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray) -> np.ndarray:
    """Side by side: the image, the ground truth (if known) and the prediction, as ``panel_legend`` says."""
    height, width = image.shape[:2]
    tinted = [(truth, TRUTH_COLOUR)] if truth is not None else []
    tinted.append((prediction, PREDICTION_COLOUR))
    # One allocation, each panel drawn into its place: no per-panel copies to concatenate.
    panel = np.full((height, (1 + len(tinted)) * width + len(tinted) * _GAP, 3), 255, dtype=np.uint8)
    panel[:, :width] = image
    for i, (mask, colour) in enumerate(tinted, start=1):
        left = i * (width + _GAP)
        tint(image, mask, colour, out=panel[:, left:left + width])
    return panel


def panel_legend(threshold: float, with_truth: bool = True) -> str:
    """The one-line key to ``overlay_panel``'s panels, naming the colours they are drawn in."""
    truth = f" | ground truth ({TRUTH_COLOUR.name})" if with_truth else ""
    return f"Each panel: image{truth} | prediction at threshold {threshold:g} ({PREDICTION_COLOUR.name})."
