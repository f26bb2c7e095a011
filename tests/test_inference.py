"""Tiled inference and `crackops predict`: pure functions and fake per-pixel models, no MLflow server."""
from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import CrackopsError
from pipeline.inference.predict import collect_images, predict_images
from pipeline.inference.probabilities import _predict_resized, as_segmenter, predict_mask, predict_probabilities
from pipeline.inference.tiling import (
    axis_weights,
    default_overlap,
    default_tile,
    ramp_window,
    tile_boxes,
    tile_starts,
    tiled_probabilities,
    tiled_rows,
)
from pipeline.params import load_params
from pipeline.visualize import PREDICTION_COLOUR, TRUTH_COLOUR, overlay_panel


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
    np.testing.assert_array_equal(default[0], _predict_resized(as_segmenter(model), [small], size, 4)[0])
    assert default[1].shape == image.shape[:2]
    assert default_tile(size) == 64 and default_overlap(64) == 16


def test_predict_mask_is_the_thresholded_probability_map_tiled_or_whole() -> None:
    size, model = 32, PixelNet(32)
    rng = np.random.default_rng(2)
    for shape in ((80, 112, 3), (40, 50, 3)):  # tiled (larger than the 64 px tile) and whole
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        prob = predict_probabilities(model, [image], size)[0]
        threshold = float(np.median(prob))  # a threshold that splits this map in two
        mask = predict_mask(model, image, size, threshold)
        assert mask.dtype == np.uint8 and mask.shape == shape[:2]
        np.testing.assert_array_equal(mask, (prob >= threshold).astype(np.uint8))


def test_predicting_images_does_not_import_mlflow(tmp_path: Path) -> None:
    # Inference sits below tracking: predicting a photo must not pay for (or need) MLflow.
    photo = _write(tmp_path / "photo.png", (40, 90))  # larger than the default tile: the tiled path too
    code = ("import sys, torch\n"
            "from pathlib import Path\n"
            "from pipeline.inference.predict import predict_images\n"
            "from pipeline.params import load_params\n"
            "params = load_params('missing.yaml', ['data.img_size=32'])\n"
            f"predict_images(torch.nn.Conv2d(3, 1, 1), params, [Path({str(photo)!r})], Path({str(tmp_path / 'out')!r}),"
            " progress=False)\n"
            "print('mlflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, check=True)
    assert (tmp_path / "out/photo_mask.png").is_file()
    assert result.stdout.strip() == "False"


def test_overlay_of_a_large_photo_is_scaled_down_but_its_mask_is_not(tmp_path: Path, monkeypatch) -> None:
    import pipeline.inference.predict as predict

    monkeypatch.setattr(predict, "OVERLAY_MAX_SIDE", 100)
    params = load_params("missing.yaml", ["data.img_size=32"])
    (result,) = predict_images(PixelNet(32), params, [_write(tmp_path / "big.png", (90, 120))], tmp_path / "out",
                               progress=False).predictions
    assert cv2.imread(str(tmp_path / "out" / result.mask)).shape[:2] == (90, 120)
    overlay = cv2.imread(str(tmp_path / "out" / result.overlay))
    assert max(overlay.shape[:2]) <= 100 + 4 and overlay.shape[0] == round(90 * 100 / 240)


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
    report = predict_images(PixelNet(32), params, paths, tmp_path / "out", progress=False)
    assert [r.mask for r in report.predictions] == ["wide_mask.png", "small_mask.png"]
    for path, result in zip(paths, report.predictions):
        mask = cv2.imread(str(tmp_path / "out" / result.mask), cv2.IMREAD_UNCHANGED)
        assert mask.shape == cv2.imread(str(path)).shape[:2] and set(np.unique(mask)) <= {0, 255}
        overlay = cv2.imread(str(tmp_path / "out" / result.overlay))
        assert overlay.shape == (mask.shape[0], 2 * mask.shape[1] + 4, 3)
        assert result.crack_fraction == (mask > 0).mean()
    summary = json.loads((tmp_path / "out/predictions.json").read_text())
    assert summary == {"predictions": [{"image": str(p), "mask": r.mask, "overlay": r.overlay, "height": r.height,
                                        "width": r.width, "crack_fraction": r.crack_fraction}
                                       for p, r in zip(paths, report.predictions)],
                       "failed": [], "not_reached": []}


def test_predict_cli_scores_every_readable_image_and_names_the_unreadable_one(tmp_path: Path, monkeypatch, capsys):
    # Once the first unreadable file stopped the run: later images unpredicted, no predictions.json.
    import registry.export
    from crackops.cli import main

    good = [_write(tmp_path / "in/a.png", (40, 60)), _write(tmp_path / "in/c.jpg", (30, 50))]
    bad = tmp_path / "in/b.jpg"
    bad.write_bytes(good[1].read_bytes()[:300])  # a truncated JPEG, between the two good ones
    params = load_params("missing.yaml", ["data.img_size=32"])
    monkeypatch.setattr(registry.export, "load_predictor",
                        lambda uri, workdir, tracking_uri=None, precision=None: (PixelNet(32), params))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--model-uri", "some-model", "--output", str(out),
                 "--no-progress"]) == 1
    printed = capsys.readouterr()
    assert "2 masks and overlays written" in printed.out and "(model some-model, PyTorch)" in printed.out
    assert printed.err.splitlines()[-1] == (f"crackops predict: cannot read {bad.resolve()}: "
                                            "not a decodable image (truncated, corrupt or not an image file)")
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png", "c_mask.png", "c_overlay.png",
                                                     "predictions.json"]
    summary = json.loads((out / "predictions.json").read_text())
    assert [item["image"] for item in summary["predictions"]] == [str(p.resolve()) for p in good]
    assert summary["failed"] == [{"image": str(bad.resolve()),
                                  "reason": "not a decodable image (truncated, corrupt or not an image file)"}]
    assert summary["not_reached"] == []


def test_predict_records_what_it_did_when_stopped(tmp_path: Path) -> None:
    class StopsOnSecond(PixelNet):
        calls = 0

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            StopsOnSecond.calls += 1
            if StopsOnSecond.calls == 2:
                raise KeyboardInterrupt
            return super().forward(images)

    params = load_params("missing.yaml", ["data.img_size=32"])
    paths = [_write(tmp_path / f"img/{name}.png", (20, 24)) for name in ("a", "b", "c")]
    (tmp_path / "img/empty.png").write_bytes(b"")
    paths.insert(1, tmp_path / "img/empty.png")
    with pytest.raises(KeyboardInterrupt):
        predict_images(StopsOnSecond(32), params, paths, tmp_path / "out", progress=False)
    summary = json.loads((tmp_path / "out/predictions.json").read_text())
    assert [item["image"] for item in summary["predictions"]] == [str(paths[0])]
    assert summary["failed"] == [{"image": str(paths[1]), "reason": "empty file (0 bytes)"}]
    assert summary["not_reached"] == [str(paths[2]), str(paths[3])]


def _peak_allocation(function) -> int:
    """Peak Python-side allocation of ``function()`` (numpy reports its buffers to tracemalloc): a
    deterministic count, not a timing or an RSS figure."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tiled_rows_hold_one_band_whatever_the_image_height() -> None:
    width, tile = 800, 64
    one_batch = 4 * tile * tile * (3 * 4 + 4 * 4)  # crops as float32 RGB, their maps and the window product
    band = tile * width * 4
    for height in (600, 2400):
        image = np.zeros((height, width, 3), dtype=np.uint8)
        covered = []

        def consume() -> None:
            for top, rows in tiled_rows(image, per_pixel, tile, 16, batch_size=4):
                assert rows.dtype == np.float32 and rows.shape[1] == width
                covered.append((top, rows.shape[0]))

        peak = _peak_allocation(consume)
        # The band, one finished copy of it and one batch: the same bound for a 4x taller image.
        assert peak <= 2 * band + one_batch + 64 * 1024, (height, peak)
        assert covered[0][0] == 0 and sum(n for _, n in covered) == height
        assert all(top + n == following for (top, n), (following, _) in zip(covered, covered[1:]))


def test_tiled_probabilities_equal_the_tile_sum_divided_by_the_weights() -> None:
    height, width, tile = 150, 170, 64
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    prob = tiled_probabilities(image, per_pixel, tile, 16, batch_size=4)
    assert prob.dtype == np.float32 and prob.shape == (height, width)
    weights, blended = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
    for y, x, h, w in tile_boxes(height, width, tile, 16):
        window = np.outer(ramp_window(h, 16), ramp_window(w, 16))
        weights[y:y + h, x:x + w] += window
        blended[y:y + h, x:x + w] += per_pixel([image[y:y + h, x:x + w]])[0] * window
    np.testing.assert_allclose(np.outer(axis_weights(height, tile, 16), axis_weights(width, tile, 16)), weights,
                               rtol=1e-6)
    np.testing.assert_allclose(prob, blended / weights, rtol=1e-5, atol=1e-6)


def test_overlay_is_drawn_band_by_band_as_before() -> None:
    # The tint formula of the whole-image version, on an image taller than one band of rows.
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 20, 3), dtype=np.uint8)
    truth, prediction = rng.random((300, 20)) < 0.3, (rng.random((300, 20)) < 0.2).astype(np.uint8) * 255

    def reference(mask: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
        out = image.astype(np.float32)
        where = mask.astype(bool)
        out[where] = (1 - 0.6) * out[where] + 0.6 * np.array(rgb, dtype=np.float32)
        return out.clip(0, 255).astype(np.uint8)

    gap = np.full((300, 4, 3), 255, np.uint8)
    expected = np.concatenate([image, gap, reference(truth, TRUTH_COLOUR.rgb), gap,
                               reference(prediction, PREDICTION_COLOUR.rgb)], axis=1)
    np.testing.assert_array_equal(overlay_panel(image, truth, prediction), expected)
