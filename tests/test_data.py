"""Data layer: synthetic generator, folder validation, split, prepare, torch dataset, corruptions."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.data import (
    CrackDataset,
    SamplePair,
    blur_down_up,
    build_train_augmentation,
    discover_pairs,
    gaussian_blur,
    generate_dataset,
    is_strictly_binary,
    load_manifest,
    low_light_blur,
    prepare_dataset,
    read_image,
    read_mask,
    read_raw_mask,
    render_sample,
    split_pairs,
    validate_pairs,
)
from pipeline.data import prepare as prepare_module
from pipeline.data import synthetic as synthetic_module
from pipeline.errors import DatasetError

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def _square_mask(h: int, w: int, value: int = 255) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = value
    return mask


def _make_flat(root: Path, stems: list[str], h: int = 30, w: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for stem in stems:
        _write(root / "images" / f"{stem}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        _write(root / "masks" / f"{stem}.png", _square_mask(h, w))
    return root


def _pairs(n: int) -> list[SamplePair]:
    return [SamplePair(f"{i:03d}", Path(f"images/{i:03d}.png"), Path(f"masks/{i:03d}.png")) for i in range(n)]


def _no_temp_leftovers(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _high_freq_energy(image: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn") / "raw", n_images=12, size=64, seed=5)


@pytest.fixture(scope="module")
def prepared_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "prepared"
    prepare_dataset(synthetic_dir, out, img_size=48, val_fraction=0.25, test_fraction=0.25, seed=1)
    return out


# ---------------------------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------------------------


def test_generate_is_deterministic_complete_and_binary(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", n_images=6, size=64, seed=3)
    b = generate_dataset(tmp_path / "b", n_images=6, size=64, seed=3)
    c = generate_dataset(tmp_path / "c", n_images=6, size=64, seed=4)

    names = [f"{i:04d}.png" for i in range(6)]
    for sub in ("images", "masks"):
        assert sorted(p.name for p in (a / sub).iterdir()) == names
        for name in names:
            assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes()
    assert any((a / "images" / n).read_bytes() != (c / "images" / n).read_bytes() for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp folders left

    for name in names:
        mask = cv2.imread(str(a / "masks" / name), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (64, 64)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        image = cv2.imread(str(a / "images" / name), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 64, 3)


def test_generate_crack_free_share_and_crack_fraction(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "d", n_images=20, size=128, seed=0, crack_free_fraction=0.25)
    fractions = [read_mask(p).mean() for p in sorted((out / "masks").iterdir())]
    assert sum(f == 0 for f in fractions) == round(20 * 0.25)
    cracked = [f for f in fractions if f > 0]
    assert len(cracked) == 15
    assert all(0.003 <= f <= 0.15 for f in cracked), cracked


def test_generate_is_atomic_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic_module.render_sample
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_module, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "out", n_images=5, size=32, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_render_sample_contract() -> None:
    image, mask = render_sample(np.random.default_rng(7), 96)
    again, mask_again = render_sample(np.random.default_rng(7), 96)
    assert image.dtype == np.uint8 and image.shape == (96, 96, 3)
    assert mask.dtype == np.uint8 and mask.shape == (96, 96)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert np.array_equal(image, again) and np.array_equal(mask, mask_again)
    # Cracks are darker than their surroundings.
    grey = image.mean(axis=2)
    assert grey[mask == 1].mean() < grey[mask == 0].mean() - 15

    _, empty = render_sample(np.random.default_rng(7), 96, crack_free=True)
    assert not empty.any()


def test_masonry_looks_different_from_pavement() -> None:
    def warmth(domain: str) -> float:
        images = [render_sample(np.random.default_rng([1, i]), 64, domain)[0] for i in range(8)]
        means = np.mean([im.reshape(-1, 3).mean(axis=0) for im in images], axis=0)
        return float(means[0] - means[2])  # red minus blue

    assert warmth("masonry") > warmth("pavement") + 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_images": 0}, "n_images"),
        ({"size": 16}, "size"),
        ({"domain": "moon"}, "domain"),
        ({"crack_free_fraction": 1.5}, "crack_free_fraction"),
    ],
)
def test_generate_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"n_images": 2, "size": 32, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# folder discovery and validation
# ---------------------------------------------------------------------------------------------


def test_discover_pairs_matches_stems_across_extensions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write(tmp_path / "images" / "b.JPG", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    _write(tmp_path / "images" / "a.jpg", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    _write(tmp_path / "masks" / "a.png", _square_mask(20, 20))
    _write(tmp_path / "masks" / "b.png", _square_mask(20, 20))
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    found = discover_pairs(tmp_path)
    assert list(found) == [None]
    assert [(p.stem, p.image.name, p.mask.name) for p in found[None]] == [
        ("a", "a.jpg", "a.png"),
        ("b", "b.JPG", "b.png"),
    ]


def test_discover_lists_every_unmatched_file(tmp_path: Path) -> None:
    _make_flat(tmp_path, ["a"])
    _write(tmp_path / "images" / "x.jpg", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "images" / "y.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "masks" / "z.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError) as err:
        discover_pairs(tmp_path)
    message = str(err.value)
    assert "missing mask for images/x.jpg" in message
    assert "missing mask for images/y.png" in message
    assert "mask without image: masks/z.png" in message


def test_discover_rejects_unknown_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        discover_pairs(tmp_path / "nowhere")
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError, match="expected images/ and masks/"):
        discover_pairs(tmp_path)
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="needs train/"):
        discover_pairs(tmp_path)


def test_validate_lists_every_bad_file_in_one_error(tmp_path: Path) -> None:
    _make_flat(tmp_path, ["good", "badimg", "badmask", "small"], h=30, w=40)
    (tmp_path / "images" / "badimg.png").write_bytes(b"this is not a png at all")
    (tmp_path / "masks" / "badmask.png").write_bytes(b"\x89PNG garbage")
    _write(tmp_path / "masks" / "small.png", _square_mask(20, 25))
    with pytest.raises(DatasetError) as err:
        validate_pairs(discover_pairs(tmp_path)[None], root=tmp_path)
    message = str(err.value)
    assert "images/badimg.png: unreadable image" in message
    assert "masks/badmask.png: unreadable mask" in message
    assert "masks/small.png: mask is 25x20 but image images/small.png is 40x30" in message
    assert "good" not in message


def test_validate_caps_the_listing(tmp_path: Path) -> None:
    _make_flat(tmp_path, [f"{i:02d}" for i in range(55)], h=8, w=8)
    for p in (tmp_path / "images").iterdir():
        p.write_bytes(b"junk")
    with pytest.raises(DatasetError) as err:
        validate_pairs(discover_pairs(tmp_path)[None], root=tmp_path)
    assert "... and 5 more" in str(err.value)
    assert str(err.value).count("unreadable image") == 50


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    found = discover_pairs(tmp_path)
    assert found == {None: []}
    with pytest.raises(DatasetError, match=f"dataset is empty: no image/mask pairs under {tmp_path}"):
        validate_pairs(found[None], root=tmp_path)


def test_mask_rule_covers_common_encodings(tmp_path: Path) -> None:
    h, w = 32, 32
    expected = np.zeros((h, w), np.uint8)
    expected[5:19, 7:22] = 1  # off the 8x8 JPEG block grid, so JPEG leaves in-between values
    rng = np.random.default_rng(0)
    red = np.zeros((h, w, 3), np.uint8)
    red[..., 2] = expected * 255  # BGR on disk: a red crack on black
    masks = {
        "zero_one": _write(tmp_path / "masks" / "zero_one.png", expected),
        "zero_255": _write(tmp_path / "masks" / "zero_255.png", expected * 255),
        "rgb": _write(tmp_path / "masks" / "rgb.png", red),
        "sixteen": _write(tmp_path / "masks" / "sixteen.png", expected.astype(np.uint16) * 65535),
        "jpeg": _write(tmp_path / "masks" / "jpeg.jpg", expected * 255),
    }
    for stem in masks:
        _write(tmp_path / "images" / f"{stem}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    for stem, path in masks.items():
        got = read_mask(path)
        assert got.dtype == np.uint8 and got.shape == (h, w), stem
        assert set(np.unique(got).tolist()) <= {0, 1}, stem
        assert np.array_equal(got, expected), stem
    assert not is_strictly_binary(read_raw_mask(masks["jpeg"]))
    assert all(is_strictly_binary(read_raw_mask(p)) for s, p in masks.items() if s != "jpeg")

    report = validate_pairs(discover_pairs(tmp_path)[None], root=tmp_path)
    assert (report.n_pairs, report.n_thresholded, report.n_crack_free) == (5, 1, 0)


def test_read_image_normalises_channels_and_depth(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(read_image(_write(tmp_path / "g.png", grey)), np.dstack([grey] * 3))
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 2] = 200  # red
    bgra[..., 3] = 10  # nearly transparent: alpha must be dropped, not blended
    assert read_image(_write(tmp_path / "a.png", bgra))[0, 0].tolist() == [200, 0, 0]
    deep = np.full((8, 8, 3), 65535, np.uint16)
    assert read_image(_write(tmp_path / "d.png", deep)).max() == 255
    with pytest.raises(DatasetError, match="bad.png"):
        read_image(tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete() -> None:
    pairs = _pairs(20)
    split = split_pairs(pairs, 0.2, 0.1, seed=3)
    stems = {k: [p.stem for p in v] for k, v in split.items()}
    assert [len(stems[k]) for k in ("train", "val", "test")] == [14, 4, 2]
    all_stems = [s for v in stems.values() for s in v]
    assert sorted(all_stems) == [p.stem for p in pairs] and len(set(all_stems)) == 20
    assert all(v == sorted(v) for v in stems.values())

    shuffled = [pairs[i] for i in np.random.default_rng(9).permutation(20)]
    assert split_pairs(shuffled, 0.2, 0.1, seed=3) == split
    assert split_pairs(pairs, 0.2, 0.1, seed=4) != split


def test_split_small_datasets() -> None:
    split = split_pairs(_pairs(3), 0.0, 0.0, seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(DatasetError, match="at least 3"):
        split_pairs(_pairs(2), 0.2, 0.2, seed=0)
    with pytest.raises(ValueError):
        split_pairs(_pairs(10), 0.6, 0.5, seed=0)


def test_presplit_folders_are_respected(tmp_path: Path) -> None:
    layout = {"train": ["t1", "t2", "t3", "t4"], "val": ["v1"], "test": ["x1", "x2"]}
    for split, stems in layout.items():
        _make_flat(tmp_path / "src" / split, stems, h=20, w=20)
    found = discover_pairs(tmp_path / "src")
    assert {k: [p.stem for p in v] for k, v in found.items()} == layout

    manifest = prepare_dataset(tmp_path / "src", tmp_path / "out", 16, 0.3, 0.3, seed=0)
    assert manifest["splits"] == layout
    assert manifest["presplit"] is True


def test_presplit_without_val_carves_it_from_train(tmp_path: Path) -> None:
    _make_flat(tmp_path / "src" / "train", [f"t{i}" for i in range(8)], h=20, w=20)
    _make_flat(tmp_path / "src" / "test", ["x1", "x2"], h=20, w=20)
    manifest = prepare_dataset(tmp_path / "src", tmp_path / "out", 16, 0.2, 0.2, seed=0)
    assert manifest["splits"]["test"] == ["x1", "x2"]
    assert manifest["counts"] == {"train": 6, "val": 2, "test": 2}
    assert not set(manifest["splits"]["val"]) & set(manifest["splits"]["train"])


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def test_prepare_writes_resized_binary_files_and_manifest(synthetic_dir: Path, prepared_dir: Path) -> None:
    manifest = load_manifest(prepared_dir)
    assert manifest["img_size"] == 48 and manifest["seed"] == 1
    assert manifest["counts"] == {"train": 6, "val": 3, "test": 3}
    assert sorted(s for v in manifest["splits"].values() for s in v) == [f"{i:04d}" for i in range(12)]
    assert manifest["n_thresholded_masks"] == 0
    assert len(manifest["files"]) == 24
    assert all(0 <= f < 0.2 for f in manifest["crack_pixel_fraction"].values())
    assert max(manifest["crack_pixel_fraction"].values()) > 0.001

    for rel, digest in manifest["files"].items():
        path = prepared_dir / rel
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if "/masks/" in rel:
            assert raw.shape == (48, 48) and set(np.unique(raw).tolist()) <= {0, 255}
        else:
            assert raw.shape == (48, 48, 3)
    assert _no_temp_leftovers(prepared_dir.parent)


def test_prepare_rerun_gives_identical_manifest(synthetic_dir: Path, prepared_dir: Path) -> None:
    first = json.loads((prepared_dir / "manifest.json").read_text())
    again = prepare_dataset(synthetic_dir, prepared_dir, img_size=48, val_fraction=0.25, test_fraction=0.25, seed=1)
    assert again == first
    assert json.loads((prepared_dir / "manifest.json").read_text()) == first
    assert _no_temp_leftovers(prepared_dir.parent)


def test_prepare_leaves_nothing_when_interrupted(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = prepare_module.read_image
    calls = {"n": 0}

    def flaky(path: Path) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(prepare_module, "read_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(synthetic_dir, tmp_path / "out", 32, 0.2, 0.2, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_prepare_refuses_to_overwrite_its_source(synthetic_dir: Path) -> None:
    with pytest.raises(ValueError, match="overlap"):
        prepare_dataset(synthetic_dir, synthetic_dir, 32, 0.2, 0.2, seed=0)
    with pytest.raises(ValueError, match="overlap"):
        prepare_dataset(synthetic_dir, synthetic_dir.parent, 32, 0.2, 0.2, seed=0)


@pytest.mark.parametrize("overrides, message", [
    (["data.source=cracks", "data.prepared_dir=cracks"], "data.prepared_dir cracks overlaps data.source cracks"),
    (["data.source=cracks", "data.prepared_dir=cracks/prepared"],
     "data.prepared_dir cracks/prepared overlaps data.source cracks"),
    (["data.source=raw/all", "data.prepared_dir=raw"], "data.prepared_dir raw overlaps data.source raw/all"),
    (["data.prepared_dir=data/synthetic"],
     "data.prepared_dir data/synthetic overlaps data.source data/synthetic/pavement"),
    (["data.prepared_dir=data/zero_shot/prepared"],
     "data.prepared_dir data/zero_shot/prepared overlaps the zero-shot sets' folder data/zero_shot"),
    (["eval.zero_shot=[data/zero_shot/cfd]"],
     "eval.zero_shot entry data/zero_shot/cfd overlaps the zero-shot sets' folder data/zero_shot"),
])
def test_prepare_names_both_keys_when_folders_overlap(tmp_path, monkeypatch, capsys, overrides, message):
    # Once a raw ValueError traceback; preparing would have replaced the dataset with its own output.
    from crackops.cli import main

    monkeypatch.chdir(tmp_path)
    defaults = Path(__file__).with_name("defaults.yaml")
    assert main(["prepare", "--params", str(defaults), *(arg for item in overrides for arg in ("-S", item))]) == 2
    assert capsys.readouterr().err == (f"crackops prepare: error: {message}; preparing replaces the folders "
                                       "it writes, so keep the two apart\n")
    assert list(tmp_path.iterdir()) == []  # refused before generating or writing anything


def test_prepare_reports_pairing_and_content_problems_in_one_run(tmp_path, monkeypatch, capsys):
    # Once pairing problems stopped prepare before any file was read: the bad contents surfaced one
    # fix-and-rerun later. One run now names every file at fault.
    from crackops.cli import main

    source = _make_flat(tmp_path / "src", ["good1", "good2", "truncated", "empty", "small", "text"], h=30, w=40)
    rng = np.random.default_rng(1)
    _write(source / "images" / "orphan.png", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    _write(source / "masks" / "lonely.png", _square_mask(30, 40))
    (source / "images" / "truncated.png").unlink()
    jpeg = _write(source / "images" / "truncated.jpg", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (source / "masks" / "empty.png").write_bytes(b"")
    _write(source / "masks" / "small.png", _square_mask(20, 25))
    (source / "images" / "text.png").write_text("a text file with an image's name\n")

    monkeypatch.chdir(tmp_path)
    defaults = Path(__file__).with_name("defaults.yaml")
    assert main(["prepare", "--params", str(defaults), "-S", f"data.source={source}",
                 "-S", "data.prepared_dir=prepared", "-S", "eval.zero_shot=[]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"crackops prepare: error: dataset {source} has 6 problem(s):\n")
    lines = err.splitlines()[1:]
    assert lines == [
        "  - missing mask for images/orphan.png",
        "  - mask without image: masks/lonely.png",
        "  - masks/empty.png: unreadable mask: empty file (0 bytes)",
        "  - masks/small.png: mask is 25x20 but image images/small.png is 40x30",
        "  - images/text.png: unreadable image: not a decodable image (truncated, corrupt or not an image file)",
        "  - images/truncated.jpg: unreadable image: not a decodable image (truncated, corrupt or not an image file)",
    ]
    assert not (tmp_path / "prepared").exists()


def test_load_manifest_explains_missing_and_broken(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="run `crackops prepare` first"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable"):
        load_manifest(tmp_path)


# ---------------------------------------------------------------------------------------------
# torch dataset and augmentation
# ---------------------------------------------------------------------------------------------


def test_crack_dataset_shapes_and_ranges(prepared_dir: Path) -> None:
    manifest = load_manifest(prepared_dir)
    ds = CrackDataset(prepared_dir / "train")
    assert ds.stems == manifest["splits"]["train"] and len(ds) == 6
    for image, mask in (ds[i] for i in range(len(ds))):
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32
        assert mask.shape == (1, 48, 48) and mask.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert set(mask.unique().tolist()) <= {0.0, 1.0}

    subset = list(reversed(ds.stems[:3]))
    small = CrackDataset(prepared_dir / "train", stems=subset)
    assert small.stems == subset and len(small) == 3
    assert torch.equal(small[0][0], ds[2][0])
    with pytest.raises(DatasetError, match="nope"):
        CrackDataset(prepared_dir / "train", stems=["nope"])


def test_crack_dataset_rejects_empty_split(tmp_path: Path) -> None:
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir(parents=True)
    with pytest.raises(DatasetError, match=str(tmp_path / "train")):
        CrackDataset(tmp_path / "train")


def test_augmentation_keeps_masks_binary_and_aligned(prepared_dir: Path) -> None:
    ds = CrackDataset(prepared_dir / "train", transform=build_train_augmentation(color_blur=True, seed=0))
    plain = CrackDataset(prepared_dir / "train")
    changed = 0
    for _ in range(3):
        for i in range(len(ds)):
            image, mask = ds[i]
            assert image.shape == (3, 48, 48) and 0.0 <= image.min() and image.max() <= 1.0
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            changed += not torch.equal(mask, plain[i][1]) or not torch.equal(image, plain[i][0])
    assert changed > 0

    # Geometry must move image and mask together: augment an image that *is* its mask.
    aug = build_train_augmentation(flip=True, rotate=True, seed=1)
    mask = cv2.imread(str(next((prepared_dir / "train" / "masks").iterdir())), cv2.IMREAD_GRAYSCALE) // 255
    mask[10:20, 5:30] = 1  # a large asymmetric blob so misalignment would show
    for _ in range(10):
        out = aug(image=np.dstack([mask * 255] * 3), mask=mask)
        agreement = ((out["image"][..., 0] > 127) == (out["mask"] > 0)).mean()
        assert agreement > 0.97
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1}


# ---------------------------------------------------------------------------------------------
# corruptions
# ---------------------------------------------------------------------------------------------


def test_low_light_drops_value_by_50() -> None:
    grey = np.full((40, 40, 3), 128, np.uint8)
    out = low_light_blur(grey)
    assert out.shape == grey.shape and out.dtype == np.uint8
    assert abs(float(out.mean()) - 78.0) <= 1.0
    assert low_light_blur(np.full((8, 8, 3), 30, np.uint8)).max() == 0  # clipped, not wrapped


def test_blurs_remove_high_frequencies_and_keep_shape() -> None:
    image = render_sample(np.random.default_rng(2), 96)[0][:93, :67]  # odd sizes on purpose
    base = _high_freq_energy(image)
    for corrupt in (low_light_blur, blur_down_up):
        out = corrupt(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert _high_freq_energy(out) < 0.2 * base
        assert np.array_equal(corrupt(image), out)  # deterministic
    sweep = [_high_freq_energy(gaussian_blur(image, k)) for k in (1, 3, 7, 15)]
    assert sweep[0] == base and sweep == sorted(sweep, reverse=True)


def test_gaussian_blur_kernel_has_the_stated_size() -> None:
    impulse = np.zeros((41, 41, 3), np.float32)
    impulse[20, 20] = 1.0
    for k in (3, 9, 21):
        ys, xs = np.nonzero(gaussian_blur(impulse, k)[..., 0] > 0)
        assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (k, k)
    with pytest.raises(ValueError):
        gaussian_blur(impulse, 4)


# ---------------------------------------------------------------------------------------------
# real data: CrackForest
# ---------------------------------------------------------------------------------------------


def test_crackforest_discovers_and_validates(cfd_root: Path) -> None:
    found = discover_pairs(cfd_root)
    pairs = found[None]
    assert len(pairs) == 100
    assert all(p.image.suffix == ".jpg" and p.mask.suffix == ".png" for p in pairs)
    report = validate_pairs(pairs, root=cfd_root)
    assert (report.n_pairs, report.n_thresholded, report.n_crack_free) == (100, 0, 0)
    fraction = np.mean([read_mask(p.mask).mean() for p in pairs[:20]])
    assert 0.003 < fraction < 0.07


def test_crackforest_prepare_subset(cfd_root: Path, tmp_path: Path) -> None:
    for pair in discover_pairs(cfd_root)[None][:9]:
        for path, sub in ((pair.image, "images"), (pair.mask, "masks")):
            (tmp_path / "cfd" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / "cfd" / sub / path.name)
    manifest = prepare_dataset(tmp_path / "cfd", tmp_path / "prepared", 64, 0.2, 0.2, seed=0)
    assert sum(manifest["counts"].values()) == 9 and min(manifest["counts"].values()) >= 1
    assert 0 < manifest["crack_pixel_fraction"]["train"] < 0.1
    image, mask = CrackDataset(tmp_path / "prepared" / "train")[0]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64) and mask.sum() > 0


def test_ensure_training_data_prepares_once_and_leaves_zero_shot_sets_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.data import sources
    from pipeline.errors import ParamsError
    from pipeline.params import load_params

    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "data/zero_shot/synthetic-masonry/kept.txt"  # the DVC stage's output
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("prepare stage output")
    params = load_params("missing.yaml", ["data.img_size=64", "data.synthetic.n_images=10", "data.synthetic.size=64",
                                          "data.prepared_dir=bench/prepared"])
    manifest = sources.ensure_training_data(params)
    assert sum(manifest["counts"].values()) == 10 and (tmp_path / "bench/prepared").is_dir()
    assert sentinel.read_text() == "prepare stage output"
    assert sorted(p.name for p in (tmp_path / "data/zero_shot").iterdir()) == ["synthetic-masonry"]

    def must_not_prepare(*args, **kwargs):
        raise AssertionError("prepared again although the manifest is there")

    monkeypatch.setattr(sources, "prepare_dataset", must_not_prepare)
    assert sources.ensure_training_data(params) == manifest


def test_random_crop_trains_on_squares_of_crop_size():
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    out = build_train_augmentation(flip=False, rotate=False, seed=0, crop_size=32)(image=image, mask=mask)
    assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32)


def test_crop_size_is_refused_for_fixed_size_models():
    from pipeline.errors import ParamsError
    from pipeline.params import load_params

    assert load_params("missing.yaml", ["model.family=deeplabv3", "data.augment.crop_size=128"]).data.augment.crop_size == 128
    with pytest.raises(ParamsError, match="crop_size"):
        load_params("missing.yaml", ["data.augment.crop_size=128"])  # SAM: position tables fix the input size
