"""Markdown report of an evaluation: a pure function of the results, no file access."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Mapping

from pipeline.eval_schema import (BLUR_SWEEP, BLUR_SWEEP_METRICS, COLUMNS, CORRUPTION_SETS, HEADERS, TEST,
                                  ZERO_SHOT, ZERO_SHOT_MEAN, ZERO_SHOT_STD, blur_kernel, corruption_names,
                                  zero_shot_names)
from pipeline.metrics.tolerance import tolerance_rule as rule_meter
from pipeline.visualize import panel_legend

NOTES = {s.name: s.note for s in CORRUPTION_SETS}  # how the report describes each corruption set


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(label: str, n: int | None, values: list[str]) -> str:
    return "| " + " | ".join([_cell(label), "" if n is None else str(n), *values]) + " |"


def _metric_row(label: str, n: int | None, metrics: Mapping[str, float]) -> str:
    return _row(label, n, [f"{metrics[key]:.4f}" for key, _ in COLUMNS])


def _main_table(metrics: Mapping[str, Any], n_images: Mapping[str, int]) -> list[str]:
    lines = ["| Set | Images | " + " | ".join(h for _, h in COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    lines.append(_metric_row(TEST, n_images.get(TEST), metrics[TEST]))
    for name in corruption_names(metrics):
        lines.append(_metric_row(name, n_images.get(name), metrics[name]))
    zero_shot = metrics.get(ZERO_SHOT, {})
    names = zero_shot_names(metrics)
    for name in names:
        lines.append(_metric_row(f"zero-shot: {name}", n_images.get(name), zero_shot[name]))
    if names:
        mean, std = zero_shot[ZERO_SHOT_MEAN], zero_shot[ZERO_SHOT_STD]
        values = [f"{mean[key]:.4f} ± {std[key]:.4f}" for key, _ in COLUMNS]
        lines.append(_row(f"**zero-shot mean ± std** ({len(names)} sets)", None, values))
    return lines


def _blur_table(sweep: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = ["| Kernel | " + " | ".join(HEADERS[k] for k in BLUR_SWEEP_METRICS) + " |",
             "|---:|" + "---:|" * len(BLUR_SWEEP_METRICS)]
    for key, scores in sweep.items():
        kernel = blur_kernel(key)
        label = f"{kernel} (none)" if kernel == "1" else f"{kernel}×{kernel}"
        # Trees written before the per-image means lack them: a dash, not a KeyError.
        cells = [f"{scores[k]:.4f}" if k in scores else "—" for k in BLUR_SWEEP_METRICS]
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

    if metrics.get(BLUR_SWEEP):
        lines += ["## Blur sweep", "", "Gaussian blur of the test images, kernel k×k (OpenCV's sigma for k).", "",
                  *_blur_table(metrics[BLUR_SWEEP]), ""]
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
