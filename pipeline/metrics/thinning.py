"""Morphological thinning of a binary mask to 1-px lines (the BSDS benchmark's ``bwmorph(.., 'thin')``).

The two-sub-iteration algorithm of Lam, Lee and Suen (1992), as MATLAB's ``bwmorph`` and the BSDS
benchmark code use it. With the 8 neighbours ``x1 … x8`` counter-clockwise from east, a crack pixel
is removed when

* G1: exactly one ``i`` in 1..4 has ``x(2i-1) = 0`` and (``x(2i) = 1`` or ``x(2i+1) = 1``);
* G2: ``2 <= min(n1, n2) <= 3`` with ``n1 = Σ x(2k-1) ∨ x(2k)``, ``n2 = Σ x(2k) ∨ x(2k+1)``;
* G3 (first sub-iteration): ``(x2 ∨ x3 ∨ ¬x8) ∧ x1 = 0``; G3' (second): ``(x6 ∨ x7 ∨ ¬x4) ∧ x5 = 0``.

Pixels outside the image count as background. As pyEdgeEval's port does, thinning stops as soon as
a first sub-iteration removes nothing, so its counts are reproduced exactly.
"""
from __future__ import annotations

import functools

import numpy as np

# (row, column) offsets of x1 … x8: east, north-east, north, north-west, west, south-west, south, south-east.
NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


@functools.cache
def _removal_tables() -> tuple[np.ndarray, np.ndarray]:
    """Two 512-entry tables, indexed by centre bit 0 and ``x_k`` at bit ``k``: True = remove."""
    index = np.arange(512)
    centre = (index & 1).astype(bool)

    def x(k: int) -> np.ndarray:  # x1 … x8, with x9 = x1
        return ((index >> ((k - 1) % 8 + 1)) & 1).astype(bool)

    g1 = sum((~x(2 * i - 1) & (x(2 * i) | x(2 * i + 1))).astype(int) for i in range(1, 5)) == 1
    n1 = sum((x(2 * k - 1) | x(2 * k)).astype(int) for k in range(1, 5))
    n2 = sum((x(2 * k) | x(2 * k + 1)).astype(int) for k in range(1, 5))
    g2 = (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3 = ~((x(2) | x(3) | ~x(8)) & x(1))
    g3_prime = ~((x(6) | x(7) | ~x(4)) & x(5))
    return centre & g1 & g2 & g3, centre & g1 & g2 & g3_prime


def _neighbourhood_index(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    height, width = mask.shape
    index = mask.astype(np.int32)
    for bit, (dy, dx) in enumerate(NEIGHBOURS, start=1):
        index |= padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width].astype(np.int32) << bit
    return index


def thin(mask: np.ndarray) -> np.ndarray:
    """Boolean HxW ``mask`` thinned to lines one pixel wide."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"thin() takes an HxW mask, got shape {mask.shape}")
    first, second = _removal_tables()
    while True:
        remove = first[_neighbourhood_index(mask)]
        if not remove.any():
            return mask
        mask = mask & ~remove
        remove = second[_neighbourhood_index(mask)]
        if not remove.any():
            return mask
        mask = mask & ~remove
