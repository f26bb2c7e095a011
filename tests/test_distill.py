"""Lightweight-SAM distillation: the teacher-embedding cache, the student's MSE training, placeholders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from crackops.cli import main
from pipeline.distill import embed as embed_module
from pipeline.distill.embed import embed_from_params, embeddings_dir
from pipeline.distill.store import INDEX_FILE, EmbeddingStoreError, skipped_index
from pipeline.distill.student_training import distill_from_params, student_path
from pipeline.distill.teacher import SamTeacher
from pipeline.errors import CheckpointError
from pipeline.models.sam_builder import build_sam
from pipeline.models.sam_lite import SamLiteStudent
from pipeline.models.sam_lite.model import PLACEHOLDER_KEY
from pipeline.params import load_params
from pipeline.tuning.build import build_model


@pytest.fixture
def prepared_copy(tiny_prepared: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny prepared dataset, safe to modify."""
    return Path(shutil.copytree(tiny_prepared, tmp_path / "prepared"))


@pytest.fixture
def lite(prepared_copy: Path, tmp_path: Path):
    """Factory: sam_lite params at 64 px on the private dataset copy, distilling into tmp_path."""
    def make(*overrides: str):
        return load_params("missing.yaml", [
            "data.img_size=64", f"data.prepared_dir={prepared_copy}", "model.family=sam_lite",
            f"distill.out_dir={tmp_path / 'distill'}", "distill.epochs=1", "distill.shard_size=3",
            "mlflow.enabled=false", *overrides,
        ])
    return make


@pytest.fixture
def teacher_images(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images through the teacher, per forward call."""
    calls: list[int] = []
    original = SamTeacher.forward

    def counting(self, images):
        calls.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(SamTeacher, "forward", counting)
    return calls


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def n_train(prepared: Path) -> int:
    return len(json.loads((prepared / "manifest.json").read_text())["splits"]["train"])


def save_random_teacher(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(build_sam("vit_tiny", 64).state_dict(), path)
    return path


def test_second_embed_reuses_everything_without_a_teacher_forward(lite, prepared_copy, teacher_images):
    params = lite()
    first = embed_from_params(params, progress=False)
    total = n_train(prepared_copy)
    assert (first.computed, first.reused, first.written) == (total, 0, True)
    assert sum(teacher_images) == total
    folder = embeddings_dir(params)
    index = json.loads((folder / INDEX_FILE).read_text())
    assert index["count"] == total and index["embedding_shape"] == [256, 4, 4]
    assert len({entry["shard"] for entry in index["entries"]}) == -(-total // 3)  # shards of 3
    before = mtimes(folder)

    second = embed_from_params(params, progress=False)
    assert (second.computed, second.reused, second.written) == (0, total, False)
    assert sum(teacher_images) == total  # no further teacher forward
    assert mtimes(folder) == before  # nothing rewritten


def test_changed_teacher_invalidates_the_embeddings(lite, prepared_copy, tmp_path, teacher_images):
    total = n_train(prepared_copy)
    embed_from_params(lite(), progress=False)
    fingerprints = {json.loads((embeddings_dir(lite()) / INDEX_FILE).read_text())["teacher"]["fingerprint"]}

    checkpoint = save_random_teacher(tmp_path / "teacher.pth", seed=1)
    with_checkpoint = lite(f"distill.teacher_checkpoint={checkpoint}")
    assert embed_from_params(with_checkpoint, progress=False).computed == total  # variant same, weights new
    assert embed_from_params(with_checkpoint, progress=False).computed == 0
    fingerprints.add(json.loads((embeddings_dir(lite()) / INDEX_FILE).read_text())["teacher"]["fingerprint"])

    save_random_teacher(checkpoint, seed=2)  # same path, other content: a new teacher
    assert embed_from_params(with_checkpoint, progress=False).computed == total

    bigger = lite(f"distill.teacher_checkpoint={checkpoint}", "distill.teacher_img_size=128")
    report = embed_from_params(bigger, progress=False)
    assert report.computed == total and report.teacher["img_size"] == 128
    index = json.loads((embeddings_dir(bigger) / INDEX_FILE).read_text())
    fingerprints.add(index["teacher"]["fingerprint"])
    assert index["embedding_shape"] == [256, 8, 8]
    assert len(fingerprints) == 3
    assert sum(teacher_images) == 4 * total


def test_changed_images_recompute_only_themselves(lite, prepared_copy, teacher_images):
    params = lite()
    total = n_train(prepared_copy)
    embed_from_params(params, progress=False)
    images = sorted((prepared_copy / "train" / "images").glob("*.png"))
    cv2.imwrite(str(images[0]), 255 - cv2.imread(str(images[0])))  # new bytes under the same name
    images[1].unlink()
    report = embed_from_params(params, progress=False)
    assert (report.computed, report.reused) == (1, total - 2)
    index = json.loads((embeddings_dir(params) / INDEX_FILE).read_text())
    assert index["count"] == total - 1 and images[1].stem not in {e["key"] for e in index["entries"]}


def test_other_families_write_a_fixed_placeholder_and_build_no_teacher(lite, monkeypatch):
    monkeypatch.setattr(embed_module, "build_teacher", lambda spec: pytest.fail("teacher built for family sam"))
    sam, deeplab = lite("model.family=sam"), lite("model.family=deeplabv3", "distill.epochs=3")
    assert embed_from_params(sam, progress=False).skipped
    assert json.loads((embeddings_dir(sam) / INDEX_FILE).read_text()) == skipped_index()
    distill_from_params(sam)
    first = student_path(sam).read_bytes()
    assert embed_from_params(deeplab, progress=False).skipped
    distill_from_params(deeplab)
    assert student_path(deeplab).read_bytes() == first  # same bytes: DVC's train stage does not rerun
    with safe_open(str(student_path(sam)), framework="pt") as handle:
        assert PLACEHOLDER_KEY in handle.metadata() and not list(handle.keys())
    with pytest.raises(CheckpointError, match="placeholder.*crackops embed"):
        build_model(lite(f"model.student_checkpoint={student_path(sam)}"))


def test_distill_trains_from_stored_embeddings_only(lite, tmp_path, monkeypatch, capsys):
    params = lite("distill.epochs=2", "distill.batch_size=8")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.to_dict()))
    assert main(["embed", "--params", str(params_file), "--no-progress"]) == 0
    assert "images embedded" in capsys.readouterr().out
    monkeypatch.setattr(SamTeacher, "forward", lambda self, images: pytest.fail("teacher ran during distill"))
    assert main(["distill", "--params", str(params_file), "--no-progress"]) == 0
    assert "student distilled" in capsys.readouterr().out
    path = student_path(params)
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["images"] == n_train(Path(params.data.prepared_dir))
    assert all(torch.isfinite(torch.tensor(metrics["history"])))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        stored = handle.get_tensor("neck.0.weight")
    # stride 16 (the default, MobileSAM's): the student's own grid is the teacher's, 4x4 at 64 px
    assert (metadata["student_stride"], metadata["native_grid"], metadata["embedding_grid"]) == ("16", "4", "4")

    # train with family sam_lite starts from exactly these student weights
    model = build_model(lite(f"model.student_checkpoint={path}"))
    assert torch.equal(model.student.neck[0].weight.detach(), stored)
    # the same weights fit stride 32, so only the recorded stride stops them loading there
    with pytest.raises(CheckpointError, match="distilled with model.student_stride 16, but the params ask for 32"):
        build_model(lite(f"model.student_checkpoint={path}", "model.student_stride=32"))


def test_distill_at_stride_32_records_it_and_resamples_to_the_teacher_grid(lite):
    params = lite("model.student_stride=32")
    embed_from_params(params, progress=False)
    report = distill_from_params(params, progress=False)
    assert len(report.history) == 1 and torch.isfinite(torch.tensor(report.history)).all()
    with safe_open(str(report.student_path), framework="pt") as handle:
        metadata = handle.metadata()
    assert (metadata["student_stride"], metadata["native_grid"], metadata["embedding_grid"]) == ("32", "2", "4")
    assert build_model(lite(f"model.student_checkpoint={report.student_path}", "model.student_stride=32"))
    with pytest.raises(CheckpointError, match="model.student_stride 32"):
        build_model(lite(f"model.student_checkpoint={report.student_path}"))


def test_student_distilled_before_student_stride_loads_at_stride_32_only(lite, tmp_path):
    torch.manual_seed(0)
    state = SamLiteStudent(64, stride=32).state_dict()
    path = tmp_path / "old_student.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"timm_model": "tiny_vit_5m_224"})
    model = build_model(lite(f"model.student_checkpoint={path}", "model.student_stride=32"))
    assert torch.equal(model.student.neck[0].weight.detach(), state["neck.0.weight"])
    with pytest.raises(CheckpointError, match="model.student_stride 32, but the params ask for 16"):
        build_model(lite(f"model.student_checkpoint={path}"))


def test_distill_refuses_missing_or_stale_embeddings(lite, prepared_copy):
    params = lite()
    with pytest.raises(EmbeddingStoreError, match="crackops embed"):
        distill_from_params(params)
    embed_from_params(params, progress=False)
    image = sorted((prepared_copy / "train" / "images").glob("*.png"))[0]
    cv2.imwrite(str(image), 255 - cv2.imread(str(image)))
    with pytest.raises(EmbeddingStoreError, match="changed or vanished"):
        distill_from_params(params)
    with pytest.raises(EmbeddingStoreError, match="grid"):
        distill_from_params(lite("distill.teacher_img_size=128"))
