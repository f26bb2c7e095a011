"""`crackops score`: saved probability maps against masks, through evaluate's own meter."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackops.cli import main
from test_metrics import FOUR_IMAGE_MEANS, FOUR_IMAGE_POOLED, four_image_fixture
from test_tolerance_rules import fixtures as tolerance_fixtures

DEFAULTS = str(Path(__file__).with_name("defaults.yaml"))  # an empty params file: the built-in defaults


def write_folders(root: Path, pairs: list[tuple[np.ndarray, np.ndarray]], names: list[str] | None = None,
                  mask_scale: int = 255) -> tuple[Path, Path]:
    """``root/pred/<name>.png`` (probability × 255) and ``root/masks/<name>.png`` (0/``mask_scale``)."""
    pred_dir, mask_dir = root / "pred", root / "masks"
    pred_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for index, (prob, gt) in enumerate(pairs):
        name = names[index] if names else f"img{index}"
        cv2.imwrite(str(pred_dir / f"{name}.png"), np.round(np.asarray(prob) * 255).astype(np.uint8))
        cv2.imwrite(str(mask_dir / f"{name}.png"), (np.asarray(gt) > 0.5).astype(np.uint8) * mask_scale)
    return pred_dir, mask_dir


def score_json(capsys, *args: str) -> dict:
    code = main(["score", *args, "--json", "--params", DEFAULTS])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


@pytest.mark.parametrize("mask_scale", [255, 1])
def test_score_gives_the_hand_computed_pooled_and_image_mean_values(tmp_path, capsys, mask_scale):
    probs, targets = four_image_fixture()
    pairs = [(probs[i, 0].numpy(), targets[i, 0].numpy()) for i in range(4)]
    pred_dir, mask_dir = write_folders(tmp_path, pairs, mask_scale=mask_scale)
    got = score_json(capsys, str(pred_dir), str(mask_dir))
    assert {"precision", "recall", "f1", "iou", "f1_image_mean", "iou_image_mean", "ods", "ois", "ois_std",
            "ap"} <= set(got)
    assert {k: got[k] for k in FOUR_IMAGE_POOLED} == pytest.approx(FOUR_IMAGE_POOLED)
    assert {k: got[k] for k in FOUR_IMAGE_MEANS} == pytest.approx(FOUR_IMAGE_MEANS)


def test_score_applies_the_chosen_tolerance_rule(tmp_path, capsys):
    pred_dir, mask_dir = write_folders(tmp_path, tolerance_fixtures())
    square = score_json(capsys, str(pred_dir), str(mask_dir))
    # The hand-computed square ODS of these four maps (tests/test_tolerance_rules.py): 18/23.
    assert square["ods"] == pytest.approx(18 / 23) and "ois_std" in square
    offset = write_folders(tmp_path / "offset", tolerance_fixtures()[:1])
    assert score_json(capsys, *map(str, offset))["ods"] == pytest.approx(2 / 3)
    bsds = score_json(capsys, *map(str, offset), "-S", "eval.tolerance_rule=bsds")
    assert bsds["ods"] == pytest.approx(1.0) and "ois_std" not in bsds


def test_score_prints_one_line_without_json(tmp_path, capsys):
    pred_dir, mask_dir = write_folders(tmp_path, tolerance_fixtures()[:1])
    assert main(["score", str(pred_dir), str(mask_dir), "--params", DEFAULTS]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "square rule, 2 px: ODS 0.6667" in lines[0]


def score_error(capsys, *args: str) -> str:
    assert main(["score", *args, "--params", DEFAULTS]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_score_errors_name_the_folder_the_stems_and_the_file(tmp_path, capsys):
    pairs = tolerance_fixtures()
    pred_dir, mask_dir = write_folders(tmp_path, pairs, names=["a", "b", "c", "d"])
    assert "predictions folder" in score_error(capsys, str(tmp_path / "nowhere"), str(mask_dir))
    assert f"masks folder {tmp_path / 'nowhere'} does not exist" in score_error(capsys, str(pred_dir), str(tmp_path / "nowhere"))

    for name in ("x1", "x2", "x3", "x4"):
        cv2.imwrite(str(pred_dir / f"{name}.png"), np.zeros((24, 24), np.uint8))
    (mask_dir / "d.png").unlink()
    (pred_dir / "a.png").unlink()
    err = score_error(capsys, str(pred_dir), str(mask_dir))
    assert "5 predictions have no mask (d, x1, x2 and 2 more); 1 masks have no prediction (a)" in err, err

    other = write_folders(tmp_path / "sizes", [(np.zeros((24, 24)), np.zeros((24, 24))),
                                               (np.zeros((24, 20)), np.zeros((24, 24)))], names=["ok", "small"])
    err = score_error(capsys, *map(str, other))
    assert f"{other[0] / 'small.png'}: prediction is 20x24 but its mask small.png is 24x24" in err, err
