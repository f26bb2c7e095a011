"""Evaluation suite on tiny prepared sets: an oracle with known scores, and a real tiny SAM."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.data import CORRUPTIONS, CrackDataset, generate_dataset, prepare_dataset
from pipeline.errors import DatasetError
from pipeline.evaluation import (
    build_eval_sets,
    render_report,
    run_evaluation,
    score_set,
)
from pipeline.params import load_params
from pipeline.tuning.build import build_model

SIZE = 64
KERNELS = [1, 5, 9, 13, 17, 21]
IMAGE_MEAN_KEYS = {"precision_image_mean", "recall_image_mean", "f1_image_mean", "iou_image_mean"}
METRIC_KEYS = {"precision", "recall", "f1", "iou", *IMAGE_MEAN_KEYS, "pixel_ap", "ods", "ods_threshold", "ois",
               "ois_std", "ap"}


def _prepare(root: Path, name: str, n_images: int, seed: int, domain: str, test_only: bool) -> Path:
    source = generate_dataset(root / f"{name}-raw", n_images, SIZE, seed, domain)
    out = root / name
    prepare_dataset(source, out, SIZE, 0.25, 0.25, 0, test_only=test_only)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A pavement dataset (3 test images) and two masonry zero-shot sets of 3 and 2 images."""
    root = tmp_path_factory.mktemp("eval-data")
    return {
        "prepared": _prepare(root, "prepared", 12, 0, "pavement", test_only=False),
        "masonry": _prepare(root, "masonry", 3, 1, "masonry", test_only=True),
        "masonry_b": _prepare(root, "masonry_b", 2, 2, "masonry", test_only=True),
    }


def _params(*overrides: str):
    return load_params("missing.yaml", [f"data.img_size={SIZE}", "eval.batch_size=2", "eval.n_overlays=2",
                                        f"eval.blur_kernels={KERNELS}", *overrides])


def _key(image: torch.Tensor) -> bytes:
    return image.mul(255).round().to(torch.uint8).cpu().numpy().tobytes()


class Oracle(nn.Module):
    """Returns ±20 logits from the true mask of every image it was built with; all background for
    any other image (so corrupted copies, whose pixels differ, score exactly 0)."""

    def __init__(self, folders: list[Path]) -> None:
        super().__init__()
        self.masks = {}
        for folder in folders:
            dataset = CrackDataset(folder / "test")
            for i in range(len(dataset)):
                image, mask = dataset[i]
                self.masks[_key(image)] = mask

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        background = torch.zeros(1, *images.shape[-2:])
        masks = [self.masks.get(_key(image), background) for image in images]
        return torch.stack(masks).to(images.device) * 40 - 20


class Background(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((images.shape[0], 1, *images.shape[-2:]), -20.0)


def _leaves(tree, path=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{path}.{key}")
    else:
        yield path, tree


def _zero_shot(data: dict[str, Path]) -> dict[str, Path]:
    return {"masonry": data["masonry"], "masonry_b": data["masonry_b"]}


# ---------------------------------------------------------------------------------------------
# sets
# ---------------------------------------------------------------------------------------------


def test_sets_corrupt_images_only_and_sweep_has_one_set_per_kernel(data):
    sets = build_eval_sets(data["prepared"], _zero_shot(data), [9, 1, 5, 5])
    assert [(s.name, s.kind) for s in sets] == [
        ("test", "test"), ("low_light_blur", "corruption"), ("blur_down_up", "corruption"),
        ("blur_k1", "blur"), ("blur_k5", "blur"), ("blur_k9", "blur"),
        ("masonry", "zero_shot"), ("masonry_b", "zero_shot"),
    ]
    assert [s.kernel for s in sets if s.kind == "blur"] == [1, 5, 9]
    test = sets[0].dataset
    for eval_set in sets[1:6]:
        assert eval_set.dataset.stems == test.stems
        for i in range(len(test)):
            image, mask = eval_set.dataset[i]
            clean_image, clean_mask = test[i]
            assert torch.equal(mask, clean_mask), eval_set.name
            if eval_set.kernel == 1:
                assert torch.equal(image, clean_image)
            else:
                assert image.shape == clean_image.shape and image.dtype == torch.float32
                assert (image - clean_image).abs().mean() > 1e-3, eval_set.name
    # The corruption is the library function, applied to the uint8 image.
    raw = test.images[0]
    expected = torch.from_numpy(CORRUPTIONS["low_light_blur"](raw).transpose(2, 0, 1)).float() / 255
    assert torch.equal(sets[1].dataset[0][0], expected)
    assert test.transform is None  # views never alter the shared clean split
    assert len(sets[6].dataset) == 3 and len(sets[7].dataset) == 2


@pytest.mark.parametrize("name", ["test", "blur_k5", "mean", "std", "low_light_blur"])
def test_zero_shot_name_clashing_with_a_builtin_key_is_an_error(data, name):
    with pytest.raises(DatasetError, match="clashes"):
        build_eval_sets(data["prepared"], {name: data["masonry"]}, [1, 5])


def test_zero_shot_folder_without_test_split_is_a_clear_error(data, tmp_path):
    with pytest.raises(DatasetError, match="no test/"):
        build_eval_sets(data["prepared"], {"other": tmp_path}, [1])


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------


def test_all_background_model_scores_zero_recall_and_f1(data):
    test_set = build_eval_sets(data["prepared"], {}, [1])[0]
    score = score_set(Background(), test_set, _params().eval, torch.device("cpu"), n_overlays=5, progress=False)
    assert score.metrics["recall"] == 0 and score.metrics["f1"] == 0 and score.metrics["iou"] == 0
    assert score.metrics["ap"] == 0 and score.metrics["ods"] == 0
    assert score.n_images == 3 and len(score.overlays) == 3  # capped by the set size
    assert [name for name, _ in score.overlays] == test_set.dataset.stems
    assert set(score.pr_curve) == {"threshold", "precision", "recall"}


def test_overlays_and_tolerance_can_be_turned_off(data):
    test_set = build_eval_sets(data["prepared"], {}, [1])[0]
    score = score_set(Background(), test_set, _params().eval, torch.device("cpu"), n_overlays=0,
                      with_tolerance=False, progress=False)
    assert score.overlays == [] and score.pr_curve == {}
    assert set(score.metrics) == {"precision", "recall", "f1", "iou", *IMAGE_MEAN_KEYS, "pixel_ap"}


# ---------------------------------------------------------------------------------------------
# the whole suite
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle_run(data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("oracle") / "eval"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    model = Oracle([data["prepared"], data["masonry"]])  # knows masonry, not masonry_b
    metrics = run_evaluation(model, _params(), data["prepared"], _zero_shot(data), out, progress=False)
    return metrics, out


def test_perfect_predictor_scores_one_and_known_zeros(oracle_run):
    metrics, out = oracle_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics) == {"test", "low_light_blur", "blur_down_up", "blur_sweep", "zero_shot"}
    for key in ("precision", "recall", "f1", "iou", *IMAGE_MEAN_KEYS, "ods", "ois", "ap"):
        assert metrics["test"][key] == 1.0, key
        assert metrics["zero_shot"]["masonry"][key] == 1.0, key
    for name in ("low_light_blur", "blur_down_up"):
        assert set(metrics[name]) == METRIC_KEYS
        assert metrics[name]["f1"] == metrics[name]["recall"] == metrics[name]["iou"] == 0.0
    perfect, missed = ({k: value for k in ("f1", "iou", "f1_image_mean", "iou_image_mean")} for value in (1.0, 0.0))
    assert metrics["blur_sweep"] == {"k1": perfect, **{f"k{k}": missed for k in KERNELS[1:]}}
    zero_shot = metrics["zero_shot"]
    assert list(zero_shot) == ["masonry", "masonry_b", "mean", "std"]
    assert zero_shot["masonry_b"]["f1"] == 0.0
    # Population std (ddof=0): values 1 and 0 give 0.5, not 0.707.
    assert zero_shot["mean"]["f1"] == 0.5 and zero_shot["std"]["f1"] == 0.5


def test_output_folder_has_the_documented_files(oracle_run):
    metrics, out = oracle_run
    assert not (out / "stale.txt").exists()  # the folder is replaced whole
    assert not list(out.parent.glob(".eval.*"))  # no temporary folders left behind
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    overlays = {n for n in names if n.startswith("overlays/")}
    assert names - overlays == {"metrics.json", "pr_curve.csv", "blur_sweep.csv", "report.md", "report.html",
                                "pr_curve.png", "blur_sweep.png"}
    # 2 overlays for test and masonry, 2 for masonry_b (2 images), none for corruption or blur sets.
    assert len(overlays) == 6
    assert {n.split("/")[1].rsplit("_", 1)[0] for n in overlays} == {"test", "masonry", "masonry_b"}

    with open(out / "pr_curve.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["threshold", "precision", "recall"] and len(rows) == 99
    assert all(float(r["precision"]) == 1.0 and float(r["recall"]) == 1.0 for r in rows)
    with open(out / "blur_sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["kernel"]) for r in rows] == KERNELS and list(rows[0]) == ["kernel", "f1", "iou"]

    for name in ("pr_curve.png", "blur_sweep.png", *overlays):
        image = cv2.imread(str(out / name))
        assert image is not None and image.size > 0, name
    panel = cv2.imread(str(out / sorted(overlays)[0]))
    assert panel.shape == (SIZE, 3 * SIZE + 8, 3)  # image | truth | prediction

    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(links) == overlays | {"pr_curve.png", "blur_sweep.png"}
    assert "| Set | Images | P | R | F1 | IoU | F1 img-mean | IoU img-mean | ODS | OIS | AP |" in report
    assert "| test | 3 | 1.0000 | 1.0000 |" in report
    assert "0.5000 ± 0.5000" in report and "ddof=0" in report
    assert "threshold **0.5**" in report and "pooled" in report and "img-mean" in report
    assert "tolerance rule `square`" in report and "5×5 square (2-pixel tolerance)" in report
    assert "| 21×21 | 0.0000 | 0.0000 | 0.0000 | 0.0000 |" in report


def test_real_tiny_sam_runs_the_whole_suite(data, tmp_path, capsys):
    torch.manual_seed(0)
    params = _params("eval.n_overlays=1")
    model = build_model(params)
    metrics = run_evaluation(model, params, data["prepared"], _zero_shot(data), tmp_path / "eval", progress=False)
    # Without progress bars (no TTY) each scored set is still a line, with the time so far.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("set ")]
    assert re.match(r"set 1/\d+ test: \d+ images, F1 \d\.\d{4}, IoU \d\.\d{4} \(image means \d\.\d{4}, \d\.\d{4}\) "
                    r"\[\d+s\]$", lines[0]), lines
    assert any(" masonry: " in line for line in lines)
    page = (tmp_path / "eval/report.html").read_text()
    assert page.count('<img ') >= 2 and page.count('src="data:image/png;base64,') == page.count('<img ')
    assert "<table>" in page  # the Markdown tables, rendered

    leaves = list(_leaves(metrics))
    assert leaves and all(type(v) in (int, float) and math.isfinite(v) for _, v in leaves), leaves
    assert all(0.0 <= v <= 1.0 for _, v in leaves)
    for name in ("test", "low_light_blur", "blur_down_up", "masonry", "mean", "std"):
        section = metrics.get(name) or metrics["zero_shot"][name]
        assert set(section) == METRIC_KEYS, name
    assert list(metrics["blur_sweep"]) == [f"k{k}" for k in KERNELS]
    assert metrics["blur_sweep"]["k1"] == {k: metrics["test"][k] for k in ("f1", "iou", "f1_image_mean", "iou_image_mean")}

    zero_shot = metrics["zero_shot"]
    for key in METRIC_KEYS:
        values = np.array([zero_shot["masonry"][key], zero_shot["masonry_b"][key]])
        assert zero_shot["mean"][key] == pytest.approx(values.mean(), abs=2e-5), key
        assert zero_shot["std"][key] == pytest.approx(values.std(ddof=0), abs=2e-5), key
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 3


def test_single_zero_shot_set_has_zero_std(data, tmp_path):
    params = _params("eval.blur_kernels=[1]", "eval.n_overlays=0")
    metrics = run_evaluation(Background(), params, data["prepared"], {"masonry": data["masonry"]},
                             tmp_path / "eval", progress=False)
    assert all(v == 0.0 for v in metrics["zero_shot"]["std"].values())
    assert metrics["zero_shot"]["mean"] == metrics["zero_shot"]["masonry"]
    assert list(metrics["blur_sweep"]) == ["k1"]


def test_empty_blur_sweep_still_writes_every_declared_file(data, tmp_path):
    params = _params("eval.blur_kernels=[]", "eval.n_overlays=0")
    metrics = run_evaluation(Background(), params, data["prepared"], {}, tmp_path / "eval", progress=False)
    assert metrics["blur_sweep"] == {} and metrics["zero_shot"] == {}
    names = {p.name for p in (tmp_path / "eval").iterdir()}
    assert names == {"metrics.json", "pr_curve.csv", "blur_sweep.csv", "report.md", "report.html", "pr_curve.png",
                     "blur_sweep.png", "overlays"}
    assert (tmp_path / "eval" / "blur_sweep.csv").read_text() == "kernel,f1,iou\n"


def test_failed_run_keeps_the_previous_output(data, tmp_path):
    class Broken(nn.Module):
        def forward(self, images):
            raise RuntimeError("boom")

    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(RuntimeError, match="boom"):
        run_evaluation(Broken(), _params(), data["prepared"], {}, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["eval"] and (out / "metrics.json").read_text() == "{}"


def test_image_size_mismatch_names_the_set(data, tmp_path):
    with pytest.raises(DatasetError, match="'test' holds 64x64 images but the model takes 128x128"):
        run_evaluation(Background(), _params("data.img_size=128"), data["prepared"], {}, tmp_path / "eval")


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def test_report_renders_without_zero_shot_sets_or_overlays():
    scores = {k: 0.25 for k in METRIC_KEYS}
    metrics = {"test": scores, "low_light_blur": scores, "blur_sweep": {"k1": {"f1": 0.25, "iou": 0.125}},
               "zero_shot": {}}
    text = render_report(metrics, threshold=0.5, tolerance=2, n_thresholds=99, n_images={"test": 7},
                         overlays={}, plots={})
    assert "| test | 7 | 0.2500 |" in text and "| low_light_blur |  | 0.2500 |" in text
    assert "| 1 (none) | 0.2500 | 0.1250 | — | — |" in text
    assert "mean ± std" not in text and "## Overlays" not in text and "## Plots" not in text


# Plain colour words and their RGB, to check a legend's word against the colour actually drawn.
COLOUR_WORDS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "cyan": (0, 255, 255),
                "magenta": (255, 0, 255), "yellow": (255, 255, 0), "white": (255, 255, 255)}


def test_overlay_legend_names_the_colours_the_panels_are_drawn_in():
    from pipeline.visualize import PREDICTION_COLOUR, TRUTH_COLOUR, overlay_panel

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    truth, prediction = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    truth[2, 3] = prediction[5, 6] = True
    panel = overlay_panel(image, truth, prediction)  # image | 4-pixel gap | truth | gap | prediction
    truth_panel, prediction_panel = panel[:, 12:20], panel[:, 24:32]
    # On a black image a painted pixel is alpha (0.6) times the colour, so it points at the colour.
    for drawn, colour in ((truth_panel[2, 3], TRUTH_COLOUR), (prediction_panel[5, 6], PREDICTION_COLOUR)):
        assert tuple(int(v) for v in drawn) == tuple(int(0.6 * c) for c in colour.rgb)
        assert COLOUR_WORDS[colour.name] == colour.rgb
    assert not truth_panel[5, 6].any() and not prediction_panel[2, 3].any()

    text = render_report({"test": {k: 0.25 for k in METRIC_KEYS}}, threshold=0.5, tolerance=2, n_thresholds=99,
                         n_images={"test": 7}, overlays={"test": ["overlays/test/a.png"]}, plots={})
    legend = next(line for line in text.splitlines() if line.startswith("Each panel:"))
    assert legend == (f"Each panel: image | ground truth ({TRUTH_COLOUR.name}) | "
                      f"prediction at threshold 0.5 ({PREDICTION_COLOUR.name}).")


def test_tolerance_rule_bsds_reaches_the_scores_and_the_report(data):
    test_set = build_eval_sets(data["prepared"], {}, [1])[0]
    score = score_set(Background(), test_set, _params("eval.tolerance_rule=bsds").eval, torch.device("cpu"),
                      n_overlays=0, progress=False)
    assert set(score.metrics) == METRIC_KEYS - {"ois_std"}  # BSDS's OIS is one pooled F, no spread
    assert score.metrics["ods"] == 0.0 and score.metrics["f1_image_mean"] == 0.0
    text = render_report({"test": score.metrics}, threshold=0.5, tolerance=2, n_thresholds=99, tolerance_rule="bsds",
                         n_images={"test": 3}, overlays={}, plots={})
    assert "tolerance rule `bsds`" in text and "within 2 pixels" in text and "square" not in text
