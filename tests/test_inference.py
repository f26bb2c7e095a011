"""Tiled inference and `crackops predict` inputs: pure functions and fake per-pixel models, no MLflow."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import CrackopsError
from pipeline.inference.predict import collect_images, predict_images
from pipeline.inference.tiling import (
    default_overlap,
    default_tile,
    ramp_window,
    tile_boxes,
    tile_starts,
    tiled_probabilities,
)
from pipeline.params import load_params
from pipeline.tracking.pyfunc import _predict_resized, predict_probabilities


def per_pixel(crops):
    """A fake model whose output at a pixel depends on that pixel only."""
    return [crop.astype(np.float32).mean(axis=2) / 255.0 for crop in crops]


class PixelNet(nn.Module):
    """A 1x1 convolution: translation-equivariant with a one-pixel receptive field."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[2.0]], [[-1.0]], [[0.5]]]]))
            self.conv.bias.fill_(-0.3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-2:] == (self.img_size, self.img_size), images.shape
        return self.conv(images)


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (96, 32, 0), (33, 32, 16), (32, 32, 4), (10, 32, 4)])
def test_tile_starts_cover_the_axis(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # every seam has >= overlap
    assert starts == sorted(set(starts))


def test_window_is_smooth_positive_and_flat_in_the_middle() -> None:
    window = ramp_window(32, 8)
    assert window.min() > 0 and window.max() == 1.0
    assert np.all(window[8:24] == 1.0) and np.all(np.diff(window[:8]) > 0)
    assert np.allclose(window, window[::-1])


@pytest.mark.parametrize("shape,tile,overlap", [((96, 128), 32, 0), ((97, 131), 32, 8), ((64, 200), 48, 20),
                                                 ((20, 300), 64, 16)])
def test_tiles_match_whole_image_for_a_per_pixel_model(shape: tuple[int, int], tile: int, overlap: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    tiled = tiled_probabilities(image, per_pixel, tile, overlap, batch_size=3)
    assert tiled.dtype == np.float32 and tiled.shape == shape
    np.testing.assert_allclose(tiled, per_pixel([image])[0], rtol=0, atol=1e-6)


def test_tiles_are_bounded_and_batched() -> None:
    image = np.zeros((150, 170, 3), dtype=np.uint8)
    seen: list[list[tuple[int, int]]] = []

    def spy(crops):
        seen.append([crop.shape[:2] for crop in crops])
        return per_pixel(crops)

    tiled_probabilities(image, spy, tile=64, overlap=16, batch_size=2)
    assert all(len(batch) <= 2 for batch in seen)
    assert all(h <= 64 and w <= 64 for batch in seen for h, w in batch)
    assert sum(map(len, seen)) == len(tile_boxes(150, 170, 64, 16)) == 3 * 4


def test_bad_tiling_arguments() -> None:
    with pytest.raises(ValueError, match="overlap"):
        tile_boxes(10, 10, 8, 8)
    with pytest.raises(ValueError, match="returned shape"):
        tiled_probabilities(np.zeros((40, 40, 3), np.uint8), lambda crops: [np.zeros((1, 1))] * len(crops), 16, 4)


def test_predict_probabilities_tiles_large_images_with_the_model() -> None:
    size = 32
    model = PixelNet(size)
    image = np.random.default_rng(1).integers(0, 256, (80, 112, 3), dtype=np.uint8)
    # tile == img_size: every crop is fed as it is, so the tiled map is the model at full resolution.
    tiled = predict_probabilities(model, [image], size, batch_size=4, tile=size, overlap=8)[0]
    with torch.no_grad():
        full = torch.sigmoid(model.conv(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255))[0, 0].numpy()
    np.testing.assert_allclose(tiled, full, atol=1e-5)
    # Images no larger than the tile keep the whole-image path (resize to img_size and back).
    small = image[:40, :50]
    default = predict_probabilities(model, [small, image], size)
    np.testing.assert_array_equal(default[0], _predict_resized(model, [small], size, 4)[0])
    assert default[1].shape == image.shape[:2]
    assert default_tile(size) == 64 and default_overlap(64) == 16


def _write(path: Path, shape: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*shape, 3), 128, dtype=np.uint8))
    return path


def test_collect_images_from_files_folders_and_globs(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "in/a.png", (8, 8)), _write(tmp_path / "in/b.jpg", (8, 8))
    (tmp_path / "in/notes.txt").write_text("not an image")
    c = _write(tmp_path / "more/c.png", (8, 8))
    found = collect_images([str(tmp_path / "in"), str(a), str(tmp_path / "more/*.png")])
    assert found == [a.resolve(), b.resolve(), c.resolve()]
    _write(tmp_path / "other/a.png", (8, 8))
    with pytest.raises(CrackopsError, match="share the name 'a'"):
        collect_images([str(a), str(tmp_path / "other/a.png")])
    with pytest.raises(CrackopsError, match="no such file"):
        collect_images([str(tmp_path / "missing.png")])
    with pytest.raises(CrackopsError, match="matches no image"):
        collect_images([str(tmp_path / "in/*.tif")])


def test_predict_images_writes_masks_of_the_original_size(tmp_path: Path) -> None:
    params = load_params("missing.yaml", ["data.img_size=32"])
    paths = [_write(tmp_path / "img/wide.png", (50, 130)), _write(tmp_path / "img/small.png", (20, 24))]
    results = predict_images(PixelNet(32), params, paths, tmp_path / "out", progress=False)
    assert [r.mask for r in results] == ["wide_mask.png", "small_mask.png"]
    for path, result in zip(paths, results):
        mask = cv2.imread(str(tmp_path / "out" / result.mask), cv2.IMREAD_UNCHANGED)
        assert mask.shape == cv2.imread(str(path)).shape[:2] and set(np.unique(mask)) <= {0, 255}
        overlay = cv2.imread(str(tmp_path / "out" / result.overlay))
        assert overlay.shape == (mask.shape[0], 2 * mask.shape[1] + 4, 3)
    assert (tmp_path / "out/predictions.json").is_file()
