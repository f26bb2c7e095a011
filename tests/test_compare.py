"""`crackops compare` says what each model was scored on and will not mix test data silently."""
from __future__ import annotations

import pytest

from pipeline.errors import CrackopsError
from registry import compare as compare_module
from registry.compare import Entry, mixed_test_data, render_compare


def _entry(label: str, source: str, digest: str, f1: str) -> Entry:
    return Entry(label, label, None, {"data.source": source, "data.manifest_sha256": digest, "eval.test.f1": f1})


def test_each_row_names_its_test_data_and_mixed_data_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic = _entry("a v1", "synthetic", "ab" * 32, "0.6076")
    cfd = _entry("b v2", "datasets/cfd", "cd" * 32, "0.2867")
    same = _entry("c v3", "synthetic", "ab" * 32, "0.5900")
    assert compare_module.test_data(synthetic) == ("synthetic", "ab" * 32)
    table = render_compare([synthetic, same])
    assert "| Test data |" in table and "synthetic @abababab" in table and "s/epoch" not in table
    assert mixed_test_data([synthetic, same]) is None
    assert mixed_test_data([synthetic, cfd]) == ("scored on different test data: a v1 on synthetic @abababab; "
                                                 "b v2 on datasets/cfd @cdcdcdcd")
    entries = {"a": synthetic, "b": cfd}
    monkeypatch.setattr(compare_module, "resolve_ref", lambda client, ref: entries[ref])
    with pytest.raises(CrackopsError, match=r"scored on different test data: .*pass --force"):
        compare_module.compare(None, ["a", "b"])
    forced = compare_module.compare(None, ["a", "b"], force=True)
    assert forced.startswith("> **Warning**: scored on different test data") and "| b v2 |" in forced


def test_pooled_and_image_mean_scores_have_their_own_columns() -> None:
    entry = Entry("a v1", "a v1", None, {"eval.test.f1": "0.7692", "eval.test.f1_image_mean": "0.625",
                                          "eval.test.iou_image_mean": "0.5833"})
    table = render_compare([entry])
    header = next(line for line in table.splitlines() if line.startswith("| Model |")).split(" | ")
    row = next(line for line in table.splitlines() if line.startswith("| a v1 |")).split(" | ")
    cells = dict(zip(header, row))
    assert (cells["F1"], cells["F1 img-mean"], cells["IoU img-mean"]) == ("0.7692", "0.6250", "0.5833")
    assert "pooled" in table and "img-mean: the mean of each image's score" in table
