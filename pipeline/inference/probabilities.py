"""Crack probabilities and masks for RGB images of any size: whole when small, in tiles when large.

One place decides how an image reaches the model: an image no larger than the tile is resized to
the model's input and its probabilities resized back; a larger one goes in overlapping tiles
(:mod:`pipeline.inference.tiling`), so memory stays bounded. ``crackops predict`` and the MLflow
pyfunc model both call this module; it never imports MLflow.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from pipeline.inference.tiling import default_overlap, default_tile, tiled_probabilities, tiled_rows


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
    model: nn.Module, images: list[np.ndarray], img_size: int, batch_size: int = 4,
    tile: int | None = None, overlap: int | None = None,
) -> list[np.ndarray]:
    """Crack probability maps (float32, each image's own HxW) for RGB uint8 images of any size.

    Images larger than ``tile`` (default 2 x ``img_size``) on a side are predicted in overlapping
    tiles (``pipeline.inference.tiling``), so memory stays bounded; smaller ones whole.
    """
    tile, overlap = _tiling(img_size, tile, overlap)
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
    model: nn.Module, images: list[np.ndarray], img_size: int, threshold: float, batch_size: int = 4,
) -> list[np.ndarray]:
    """The 0/1 crack masks (uint8, each image's HxW) of :func:`predict_probabilities` at ``threshold``."""
    return [np.greater_equal(prob, threshold).view(np.uint8)
            for prob in predict_probabilities(model, images, img_size, batch_size)]


def predict_mask(
    model: nn.Module, image: np.ndarray, img_size: int, threshold: float, batch_size: int = 4,
    tile: int | None = None, overlap: int | None = None,
) -> np.ndarray:
    """The 0/1 crack mask (uint8, the image's HxW) of :func:`predict_probabilities` at ``threshold``.

    A tiled image is thresholded band by band as :func:`~pipeline.inference.tiling.tiled_rows`
    finishes its rows: no full-size probability map is ever held, only the image and its mask.
    """
    image = _as_rgb(np.asarray(image))
    tile, overlap = _tiling(img_size, tile, overlap)
    if max(image.shape[:2]) <= tile:
        return np.greater_equal(_predict_resized(model, [image], img_size, batch_size)[0], threshold).view(np.uint8)
    mask = np.empty(image.shape[:2], dtype=np.uint8)
    rows = tiled_rows(image, lambda crops: _predict_resized(model, list(crops), img_size, batch_size),
                      tile, overlap, batch_size)
    for top, band in rows:
        np.greater_equal(band, threshold, out=mask[top:top + band.shape[0]].view(bool))
    return mask


@torch.no_grad()
def _predict_resized(model: nn.Module, images: list[np.ndarray], img_size: int, batch_size: int) -> list[np.ndarray]:
    """Each image resized to ``img_size`` (INTER_AREA, as prepare does), the probabilities resized
    back with linear interpolation, so thresholding happens at the original resolution.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = [_as_rgb(np.asarray(image)) for image in images[start:start + batch_size]]
            batch = np.stack([
                image if image.shape[:2] == (img_size, img_size)
                else cv2.resize(image, (img_size, img_size), interpolation=cv2.INTER_AREA)
                for image in chunk
            ])
            tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0).to(device)
            probs = torch.sigmoid(model(tensor).float())[:, 0].cpu().numpy()
            for image, prob in zip(chunk, probs):
                height, width = image.shape[:2]
                if prob.shape != (height, width):
                    prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
                out.append(prob.astype(np.float32, copy=False))
    finally:
        model.train(was_training)
    return out
