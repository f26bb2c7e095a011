"""Crack probabilities and masks for RGB images of any size: whole when small, in tiles when large.

One place decides how an image reaches the model: an image no larger than the tile is resized to
the model's input and its probabilities resized back; a larger one goes in overlapping tiles
(:mod:`pipeline.inference.tiling`), so memory stays bounded. ``crackops predict`` and the MLflow
pyfunc models both call this module; it never imports MLflow.

The model is a :class:`Segmenter`: a PyTorch module (wrapped in :class:`TorchSegmenter`) or an
exported ONNX graph (:class:`~pipeline.inference.onnx_segmenter.OnnxSegmenter`). Torch is imported
only for a PyTorch model, so an ONNX model predicts where torch is not installed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np

from pipeline.inference.tiling import default_overlap, default_tile, tiled_probabilities, tiled_rows

if TYPE_CHECKING:
    from torch import nn


@runtime_checkable
class Segmenter(Protocol):
    """Crack probabilities of a batch of images already at the model's input size."""

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB -> (N, S, S) float32 probabilities in [0, 1]."""


def pixels_to_input(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB -> the models' input, (N, 3, S, S) float32 in [0, 1] (normalisation is in the model)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


class TorchSegmenter:
    """A crackops PyTorch model (logits) as a :class:`Segmenter`, on the model's own device."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                tensor = torch.from_numpy(pixels_to_input(images)).to(device)
                return torch.sigmoid(self.model(tensor).float())[:, 0].cpu().numpy()
        finally:
            self.model.train(was_training)


def resize_to_input(image: np.ndarray, img_size: int) -> np.ndarray:
    """An RGB image at the model's input size, resized as prepare resizes (INTER_AREA) when it is not."""
    if image.shape[:2] == (img_size, img_size):
        return image
    return cv2.resize(image, (img_size, img_size), interpolation=cv2.INTER_AREA)


def as_segmenter(model: nn.Module | Segmenter) -> Segmenter:
    return model if isinstance(model, Segmenter) else TorchSegmenter(model)


class BadImage(ValueError):
    """An image array the model cannot take (dtype or shape); the message says which."""


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from grayscale, RGB or RGBA uint8 arrays."""
    if image.dtype != np.uint8:
        raise BadImage(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise BadImage(f"images must be HxW, HxWx3 or HxWx4, got shape {image.shape}")


def _tiling(img_size: int, tile: int | None, overlap: int | None) -> tuple[int, int]:
    tile = tile or default_tile(img_size)
    return tile, default_overlap(tile) if overlap is None else overlap


def predict_probabilities(
    model: nn.Module | Segmenter, images: list[np.ndarray], img_size: int, batch_size: int = 4,
    tile: int | None = None, overlap: int | None = None,
) -> list[np.ndarray]:
    """Crack probability maps (float32, each image's own HxW) for RGB uint8 images of any size.

    Images larger than ``tile`` (default 2 x ``img_size``) on a side are predicted in overlapping
    tiles (``pipeline.inference.tiling``), so memory stays bounded; smaller ones whole.
    """
    tile, overlap = _tiling(img_size, tile, overlap)
    model = as_segmenter(model)
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = [_as_rgb(np.asarray(image)) for image in images[start:start + batch_size]]
        small = [image for image in chunk if max(image.shape[:2]) <= tile]
        whole = iter(_predict_resized(model, small, img_size, batch_size))
        for image in chunk:
            out.append(next(whole) if max(image.shape[:2]) <= tile else tiled_probabilities(
                image, lambda crops: _predict_resized(model, list(crops), img_size, batch_size),
                tile, overlap, batch_size))
    return out


def predict_masks(
    model: nn.Module | Segmenter, images: list[np.ndarray], img_size: int, threshold: float, batch_size: int = 4,
) -> list[np.ndarray]:
    """The 0/1 crack masks (uint8, each image's HxW) of :func:`predict_probabilities` at ``threshold``."""
    return [np.greater_equal(prob, threshold).view(np.uint8)
            for prob in predict_probabilities(model, images, img_size, batch_size)]


def predict_mask(
    model: nn.Module | Segmenter, image: np.ndarray, img_size: int, threshold: float, batch_size: int = 4,
    tile: int | None = None, overlap: int | None = None,
) -> np.ndarray:
    """The 0/1 crack mask (uint8, the image's HxW) of :func:`predict_probabilities` at ``threshold``.

    A tiled image is thresholded band by band as :func:`~pipeline.inference.tiling.tiled_rows`
    finishes its rows: no full-size probability map is ever held, only the image and its mask.
    """
    image = _as_rgb(np.asarray(image))
    tile, overlap = _tiling(img_size, tile, overlap)
    model = as_segmenter(model)
    if max(image.shape[:2]) <= tile:
        return np.greater_equal(_predict_resized(model, [image], img_size, batch_size)[0], threshold).view(np.uint8)
    mask = np.empty(image.shape[:2], dtype=np.uint8)
    rows = tiled_rows(image, lambda crops: _predict_resized(model, list(crops), img_size, batch_size),
                      tile, overlap, batch_size)
    for top, band in rows:
        np.greater_equal(band, threshold, out=mask[top:top + band.shape[0]].view(bool))
    return mask


def _predict_resized(model: Segmenter, images: list[np.ndarray], img_size: int, batch_size: int) -> list[np.ndarray]:
    """Each image resized to ``img_size`` (INTER_AREA, as prepare does), the probabilities resized
    back with linear interpolation, so thresholding happens at the original resolution.
    """
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = [_as_rgb(np.asarray(image)) for image in images[start:start + batch_size]]
        batch = np.stack([resize_to_input(image, img_size) for image in chunk])
        for image, prob in zip(chunk, model.probabilities(batch)):
            height, width = image.shape[:2]
            if prob.shape != (height, width):
                prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
            out.append(prob.astype(np.float32, copy=False))
    return out
