"""Overlapping tiles for images larger than the model's input: bounded memory, seamless blending.

A pure function of the image and a tile predictor: each ``tile`` x ``tile`` crop (clipped to the
image) goes to ``predict``, and the probability maps are blended with a raised-cosine window
that fades over the ``overlap``, normalised by the summed window weights. A per-pixel model
therefore gives exactly its whole-image result, whatever the tiling.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np

TILE_FACTOR = 2  # default tile = 2 x the model's img_size: the scale of the ~500 px photos it learns from
OVERLAP_FRACTION = 0.25
WINDOW_FLOOR = 1e-3  # image borders are covered by one tile only; their weight must stay above 0
TilePredictor = Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]]


def default_tile(img_size: int) -> int:
    return img_size * TILE_FACTOR


def default_overlap(tile: int) -> int:
    return int(tile * OVERLAP_FRACTION)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: the fewest tiles that overlap by at least ``overlap``, evenly spread,
    the first flush with the start and the last with the end."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(y, x, h, w)`` of every tile, row by row; they cover the image, clipped to its size."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    h, w = min(tile, height), min(tile, width)
    return [(y, x, h, w) for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


def ramp_window(length: int, overlap: int) -> np.ndarray:
    """1-D weights: 1 in the middle, raised-cosine fades of ``overlap`` samples at both ends."""
    window = np.ones(length, dtype=np.float32)
    n = min(overlap, length // 2)
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(math.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
        window[:n], window[length - n:] = ramp, ramp[::-1]
    return np.maximum(window, WINDOW_FLOOR)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def axis_weights(length: int, tile: int, overlap: int) -> np.ndarray:
    """Summed window weights along one axis: what every position's blended value is divided by."""
    size = min(tile, length)
    window = ramp_window(size, overlap)
    weights = np.zeros(length, dtype=np.float32)
    for start in tile_starts(length, tile, overlap):
        weights[start:start + size] += window
    return weights


def tiled_rows(
    image: np.ndarray, predict: TilePredictor, tile: int, overlap: int, batch_size: int = 4
) -> Iterator[tuple[int, np.ndarray]]:
    """``(top, rows)``: the blended probability map (float32) of ``image`` (HxWxC), top to bottom.

    ``predict`` gets at most ``batch_size`` crops at a time, none larger than ``tile`` on a side,
    and returns one probability map per crop, at the crop's size. Tiles are predicted one row of
    tiles at a time, and the rows no later tile reaches are handed out as soon as they are final,
    so besides the image, memory holds one band of ``tile`` x width floats and one batch of tiles,
    whatever the image's height. Every tile has one 2-D window, the outer product of a row and a
    column window, and the tiles form a grid, so the summed weights are the outer product of two
    1-D sums and never need an array of their own.
    """
    height, width = image.shape[:2]
    tops, lefts = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    tile_h, tile_w = min(tile, height), min(tile, width)  # every tile has the same (clipped) size
    window = np.outer(ramp_window(tile_h, overlap), ramp_window(tile_w, overlap))
    row_weights, column_weights = axis_weights(height, tile, overlap), axis_weights(width, tile, overlap)

    def finished(band: np.ndarray, top: int) -> np.ndarray:
        # In place and broadcast: no temporary for the weights or the quotient.
        band /= row_weights[top:top + band.shape[0], None]
        band /= column_weights[None, :]
        return band

    band, band_top = np.zeros((tile_h, width), dtype=np.float32), tops[0]
    for top in tops:
        done = top - band_top  # rows above this tile row: no tile from here on reaches them
        if done:
            yield band_top, finished(band[:done].copy(), band_top)
            band[:tile_h - done] = band[done:]
            band[tile_h - done:] = 0
            band_top = top
        for batch in _batches(lefts, max(1, batch_size)):
            probs = predict([image[top:top + tile_h, left:left + tile_w] for left in batch])
            for left, prob in zip(batch, probs):
                if prob.shape != (tile_h, tile_w):
                    raise ValueError(f"tile predictor returned shape {prob.shape} for a {tile_h}x{tile_w} tile")
                band[:, left:left + tile_w] += prob * window
            del probs
    yield band_top, finished(band, band_top)


def tiled_probabilities(
    image: np.ndarray, predict: TilePredictor, tile: int, overlap: int, batch_size: int = 4
) -> np.ndarray:
    """Probability map (float32, HxW) of ``image`` (HxWxC) predicted tile by tile (:func:`tiled_rows`)."""
    total = np.empty(image.shape[:2], dtype=np.float32)
    for top, rows in tiled_rows(image, predict, tile, overlap, batch_size):
        total[top:top + rows.shape[0]] = rows
    return total
