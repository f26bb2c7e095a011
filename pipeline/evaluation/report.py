"""Markdown report of an evaluation: a pure function of the results, no file access."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Mapping

from pipeline.metrics.tolerance import tolerance_rule as rule_meter
from pipeline.visualize import panel_legend

# (metrics.json key, column header) of the main table: pooled scores, per-image means, tolerance scores.
COLUMNS = (
    ("precision", "P"), ("recall", "R"), ("f1", "F1"), ("iou", "IoU"),
    ("f1_image_mean", "F1 img-mean"), ("iou_image_mean", "IoU img-mean"),
    ("ods", "ODS"), ("ois", "OIS"), ("ap", "AP"),
)
SECTIONS = ("test", "blur_sweep", "zero_shot")
SUMMARY_KEYS = ("mean", "std")
NOTES = {
    "test": "in-distribution test split",
    "low_light_blur": "HSV value −50, then a 9×9 Gaussian blur (CrackSAM robustness set 1)",
    "blur_down_up": "21×21 Gaussian blur, then bicubic down to half size and back up (CrackSAM robustness set 2)",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(label: str, n: int | None, values: list[str]) -> str:
    return "| " + " | ".join([_cell(label), "" if n is None else str(n), *values]) + " |"


def _metric_row(label: str, n: int | None, metrics: Mapping[str, float]) -> str:
    return _row(label, n, [f"{metrics[key]:.4f}" for key, _ in COLUMNS])


def corruption_names(metrics: Mapping[str, Any]) -> list[str]:
    """The corruption sets in a metrics.json tree: every top-level key but the fixed sections."""
    return [key for key in metrics if key not in SECTIONS]


def zero_shot_names(metrics: Mapping[str, Any]) -> list[str]:
    return [key for key in metrics.get("zero_shot", {}) if key not in SUMMARY_KEYS]


def _main_table(metrics: Mapping[str, Any], n_images: Mapping[str, int]) -> list[str]:
    lines = ["| Set | Images | " + " | ".join(h for _, h in COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    lines.append(_metric_row("test", n_images.get("test"), metrics["test"]))
    for name in corruption_names(metrics):
        lines.append(_metric_row(name, n_images.get(name), metrics[name]))
    zero_shot = metrics.get("zero_shot", {})
    names = zero_shot_names(metrics)
    for name in names:
        lines.append(_metric_row(f"zero-shot: {name}", n_images.get(name), zero_shot[name]))
    if names:
        mean, std = zero_shot["mean"], zero_shot["std"]
        values = [f"{mean[key]:.4f} ± {std[key]:.4f}" for key, _ in COLUMNS]
        lines.append(_row(f"**zero-shot mean ± std** ({len(names)} sets)", None, values))
    return lines


def _blur_table(sweep: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = ["| Kernel | F1 | IoU | F1 img-mean | IoU img-mean |", "|---:|---:|---:|---:|---:|"]
    for key, scores in sweep.items():
        kernel = key.removeprefix("k")
        label = f"{kernel} (none)" if kernel == "1" else f"{kernel}×{kernel}"
        # Trees written before the per-image means lack them: a dash, not a KeyError.
        cells = [f"{scores[k]:.4f}" if k in scores else "—" for k in ("f1", "iou", "f1_image_mean", "iou_image_mean")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def render_report(
    metrics: Mapping[str, Any],
    *,
    threshold: float,
    tolerance: int,
    n_thresholds: int,
    tolerance_rule: str = "square",
    n_images: Mapping[str, int],
    overlays: Mapping[str, list[str]],
    plots: Mapping[str, str],
    title: str = "Evaluation report",
    subtitle: str = "",
) -> str:
    """Markdown for a metrics.json tree; ``overlays`` and ``plots`` hold paths relative to the report.

    ``overlays`` maps a set name to its panel images, ``plots`` a caption to a plot image;
    ``tolerance_rule`` (``eval.tolerance_rule``) words the ODS/OIS/AP paragraph.
    """
    n_zero_shot = len(zero_shot_names(metrics))
    lines = [f"# {title}", ""]
    if subtitle:
        lines += [subtitle, ""]
    lines += [
        f"- **P, R, F1, IoU** at threshold **{threshold:g}**, pooled: from TP/FP/FN summed over every pixel of "
        "every image of a set. **img-mean** columns are the mean of each image's score (CrackSAM's test "
        "numbers): an image with no crack and no predicted crack scores 1, one with only either of them 0.",
        "- " + rule_meter(tolerance_rule).describe(tolerance, n_thresholds),
        "- Corrupted sets change the test images only, never the masks: "
        + "; ".join(f"`{name}`: {NOTES.get(name, 'corrupted test split')}" for name in corruption_names(metrics))
        + ".",
    ]
    if n_zero_shot:
        plural = "s" if n_zero_shot > 1 else ""
        lines.append(f"- Zero-shot mean ± std over {n_zero_shot} set{plural}, as in the SAC paper; std is the "
                     "**population** standard deviation (ddof=0), so a single set has std 0.")
    lines += ["", "## Scores", "", *_main_table(metrics, n_images), ""]

    if metrics.get("blur_sweep"):
        lines += ["## Blur sweep", "", "Gaussian blur of the test images, kernel k×k (OpenCV's sigma for k).", "",
                  *_blur_table(metrics["blur_sweep"]), ""]
    if plots:
        lines += ["## Plots", ""]
        for caption, path in plots.items():
            lines += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    if any(overlays.values()):
        lines += ["## Overlays", "", panel_legend(threshold), ""]
        for name, paths in overlays.items():
            if not paths:
                continue
            lines += [f"### {name}", ""]
            lines += [f"![{path.rsplit('/', 1)[-1].removesuffix('.png')}]({path})  " for path in paths]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def report_html(markdown_text: str, folder: Path, title: str = "Evaluation report") -> str:
    """The report as one HTML page whose images are inside it (data URIs), read from ``folder``:
    MLflow's artifact view renders HTML but shows a Markdown file's image links as text."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)

    def inline(match: re.Match[str]) -> str:
        path = folder / html.unescape(match.group(2))
        if not path.is_file() or path.suffix.lower() not in _IMAGE_TYPES:
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{match.group(1)}data:{_IMAGE_TYPES[path.suffix.lower()]};base64,{data}"'

    body = re.sub(r'(<img [^>]*src=")([^":]+)"', inline, body)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_HTML_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em}"
               "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
               "img{max-width:100%}")
