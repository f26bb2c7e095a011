"""Reading and validating a dataset folder of crack images and masks.

Layout: ``images/`` and ``masks/`` with matching file stems (``images/001.jpg`` pairs with
``masks/001.png``; the extensions may differ), or ``train/``, ``val/``, ``test/`` subfolders each
holding ``images/`` and ``masks/``. Image formats: .png .jpg .jpeg .bmp .tif .tiff .webp, any case.

Mask rule (how any mask file becomes 0/1):

1. A multi-channel mask is reduced by the maximum over its colour channels (an alpha channel is
   dropped first), so a red-on-black or white-on-black RGB mask both work.
2. A mask whose values are all 0 or 1 is used as is.
3. Otherwise a pixel is crack when its value is >= 128 (16-bit masks are first scaled to 8 bit by
   keeping the high byte). This covers 0/255 masks and JPEG-compressed masks, whose edges hold
   in-between values.

A mask is *strictly binary* when its values are a subset of {0, 1} or {0, full scale} (255, or
65535 for 16-bit); any other mask needed the threshold to decide some pixels and is counted as
thresholded by :func:`validate_pairs`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
# Beyond this many lines an error message stops helping; the count still tells the scale.
_MAX_LISTED = 50
_EXPECTED_LAYOUT = (
    "expected images/ and masks/ subfolders with matching file stems, "
    "or train/ (and optionally val/, test/) subfolders each holding images/ and masks/"
)


@dataclass(frozen=True)
class SamplePair:
    """One image and its mask, matched by file stem."""

    stem: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate_pairs` found in a dataset that passed."""

    n_pairs: int
    n_thresholded: int  # masks that were not strictly binary and went through the >= 128 rule
    n_crack_free: int  # masks with no crack pixel


def format_problems(header: str, problems: list[str]) -> str:
    """One message: a header and one indented line per problem, cut at 50 lines."""
    lines = [f"  - {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    return "\n".join([header, *lines])


# ---------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    # Hidden files (.DS_Store, editor swap files) and non-image files are not samples.
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _by_stem(files: list[Path], root: Path, problems: list[str]) -> dict[str, Path]:
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.stem, []).append(f)
    for stem, group in groups.items():
        if len(group) > 1:
            names = ", ".join(str(g.relative_to(root)) for g in group)
            problems.append(f"several files share the stem {stem!r}: {names}")
    return {stem: group[0] for stem, group in groups.items()}


def _pairs_in(folder: Path, root: Path, problems: list[str]) -> list[SamplePair]:
    """Pairs in one ``images/`` + ``masks/`` folder; problems are appended, not raised."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    missing = [str(d.relative_to(root)) + "/" for d in (images_dir, masks_dir) if not d.is_dir()]
    if missing:
        problems.append(f"missing folder {' and '.join(missing)} in {folder}")
        return []
    images = _by_stem(_image_files(images_dir), root, problems)
    masks = _by_stem(_image_files(masks_dir), root, problems)
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(f"missing mask for {images[stem].relative_to(root)}")
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(f"mask without image: {masks[stem].relative_to(root)}")
    return [SamplePair(stem, images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())]


def discover_pairs(root: Path, problems: list[str] | None = None) -> dict[str | None, list[SamplePair]]:
    """Find image/mask pairs: ``{None: pairs}`` when unsplit, else ``{"train": ..., ...}``.

    Pairs are sorted by stem. Unmatched files (an image without mask, a mask without image, two
    files with one stem) are appended to ``problems`` when it is given, so a caller can report them
    together with the content problems of the pairs that did match; otherwise they are raised as
    one DatasetError. A folder that is no dataset at all is always raised: there is nothing to check.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    flat = (root / "images").is_dir() or (root / "masks").is_dir()
    if flat and split_dirs:
        raise DatasetError(
            f"{root} mixes layouts: it has images/ or masks/ and also {', '.join(s + '/' for s in split_dirs)}; "
            + _EXPECTED_LAYOUT
        )
    if not flat and not split_dirs:
        raise DatasetError(f"{root} is not a dataset folder: {_EXPECTED_LAYOUT}")
    if split_dirs and "train" not in split_dirs:
        raise DatasetError(
            f"{root} has {', '.join(s + '/' for s in split_dirs)} but no train/: a pre-split dataset needs train/"
        )

    found_problems: list[str] = []
    if flat:
        found: dict[str | None, list[SamplePair]] = {None: _pairs_in(root, root, found_problems)}
    else:
        found = {s: _pairs_in(root / s, root, found_problems) for s in split_dirs}
    if problems is not None:
        problems.extend(found_problems)
    elif found_problems:
        raise DatasetError(_dataset_problems(root, found_problems))
    return found


def _dataset_problems(root: Path, problems: list[str]) -> str:
    return format_problems(f"dataset {root} has {len(problems)} problem(s):", problems)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class UnreadableFile(DatasetError):
    """An image or mask file that does not decode; ``reason`` says why without repeating the path."""

    def __init__(self, kind: str, path: Path, reason: str) -> None:
        super().__init__(f"cannot read {kind} {path}: {reason}")
        self.path, self.reason = path, reason


def decode_file(path: Path, kind: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The decoded pixels of an image file (cv2 ``flags``); UnreadableFile says why not."""
    try:
        # imdecode over a byte buffer: cv2.imread silently fails on non-ASCII paths on some systems,
        # and it returns the decoded top of a truncated JPEG, which imdecode rejects.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise UnreadableFile(kind, path, err.strerror or str(err)) from err
    if data.size == 0:
        raise UnreadableFile(kind, path, "empty file (0 bytes)")
    try:
        raw = cv2.imdecode(data, flags)
    except cv2.error as err:
        raise UnreadableFile(kind, path, str(err).strip()) from err
    if raw is None or raw.size == 0:
        raise UnreadableFile(kind, path, "not a decodable image (truncated, corrupt or not an image file)")
    if raw.dtype not in (np.uint8, np.uint16):
        raise UnreadableFile(kind, path, f"unsupported pixel type {raw.dtype} (need 8 or 16 bit)")
    return raw


def _to_8bit(array: np.ndarray) -> np.ndarray:
    # The high byte: 0..65535 maps onto 0..255 and 32768 (half scale) onto 128.
    return (array >> 8).astype(np.uint8) if array.dtype == np.uint16 else array


def read_image(path: Path) -> np.ndarray:
    """Read an image as RGB uint8 HxWx3 (grey is replicated, alpha dropped, 16 bit scaled)."""
    raw = _to_8bit(decode_file(Path(path), "image"))
    if raw.ndim == 2 or raw.shape[2] == 1:
        return cv2.cvtColor(raw.reshape(raw.shape[:2]), cv2.COLOR_GRAY2RGB)
    if raw.shape[2] == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(raw[..., 0]), cv2.COLOR_GRAY2RGB)
    if raw.shape[2] == 4:
        return cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)


def read_raw_mask(path: Path) -> np.ndarray:
    """Read a mask file as a single-channel array of its stored values (uint8 or uint16)."""
    raw = decode_file(Path(path), "mask")
    if raw.ndim == 3:
        channels = raw.shape[2]
        if channels in (2, 4):  # drop alpha: an opaque alpha would make every pixel a crack
            raw = raw[..., : channels - 1]
        raw = raw.max(axis=2)
    return raw


def _levels(raw: np.ndarray) -> np.ndarray:
    if raw.dtype == np.uint8:
        return np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
    return np.unique(raw)


def is_strictly_binary(raw: np.ndarray) -> bool:
    """True when the raw mask holds only {0, 1} or only {0, full scale}: no thresholding needed."""
    levels = set(_levels(raw).tolist())
    full = 65535 if raw.dtype == np.uint16 else 255
    return levels <= {0, 1} or levels <= {0, full}


def mask_from_raw(raw: np.ndarray) -> np.ndarray:
    """Apply the mask rule (module docstring) to a single-channel raw mask: uint8 HxW 0/1."""
    if int(raw.max(initial=0)) <= 1:
        return raw.astype(np.uint8)
    return (_to_8bit(raw) >= 128).astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask as uint8 HxW with values 0/1, by the rule in the module docstring."""
    return mask_from_raw(read_raw_mask(path))


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _common_root(pairs: list[SamplePair]) -> Path:
    return Path(os.path.commonpath([str(p.image.parent.parent) for p in pairs]))


def _content_problems(pairs: list[SamplePair], name: Callable[[Path], str]) -> tuple[list[str], int, int]:
    """Read every pair once: (one line per bad file, thresholded masks, crack-free masks)."""
    problems: list[str] = []
    n_thresholded = n_crack_free = 0
    for pair in tqdm(pairs, desc="validate", unit="pair", disable=None):
        image = raw = None
        try:
            image = read_image(pair.image)
        except UnreadableFile as err:
            problems.append(f"{name(pair.image)}: unreadable image: {err.reason}")
        try:
            raw = read_raw_mask(pair.mask)
        except UnreadableFile as err:
            problems.append(f"{name(pair.mask)}: unreadable mask: {err.reason}")
        if raw is None:
            continue
        if image is not None and image.shape[:2] != raw.shape[:2]:
            ih, iw = image.shape[:2]
            mh, mw = raw.shape[:2]
            problems.append(f"{name(pair.mask)}: mask is {mw}x{mh} but image {name(pair.image)} is {iw}x{ih}")
        n_thresholded += not is_strictly_binary(raw)
        n_crack_free += not mask_from_raw(raw).any()
    return problems, n_thresholded, n_crack_free


def _relative_namer(base: Path) -> Callable[[Path], str]:
    def name(path: Path) -> str:
        try:
            return str(path.relative_to(base))
        except ValueError:
            return str(path)

    return name


def validate_pairs(pairs: list[SamplePair], root: Path | None = None) -> ValidationReport:
    """Read every pair once; raise one DatasetError listing every bad file, else report counts.

    ``root`` only makes messages shorter and names the folder when there are no pairs.
    """
    if not pairs:
        where = root if root is not None else "the given folder"
        raise DatasetError(f"dataset is empty: no image/mask pairs under {where}")
    base = Path(root) if root is not None else _common_root(pairs)
    problems, n_thresholded, n_crack_free = _content_problems(pairs, _relative_namer(base))
    if problems:
        where = f" under {root}" if root is not None else ""
        raise DatasetError(format_problems(f"{len(problems)} bad file(s){where}:", problems))
    return ValidationReport(n_pairs=len(pairs), n_thresholded=n_thresholded, n_crack_free=n_crack_free)


def check_dataset(root: Path) -> tuple[dict[str | None, list[SamplePair]], ValidationReport]:
    """Discover and validate ``root`` in one pass: its pairs and their counts.

    Unmatched files and bad contents go into one DatasetError, so a user fixes the whole dataset
    after one run instead of meeting the content problems only once the pairing is right.
    """
    root = Path(root)
    problems: list[str] = []
    found = discover_pairs(root, problems)
    pairs = [p for split in found.values() for p in split]
    if not pairs and not problems:
        raise DatasetError(f"dataset is empty: no image/mask pairs under {root}")
    content, n_thresholded, n_crack_free = _content_problems(pairs, _relative_namer(root))
    problems += content
    if problems:
        raise DatasetError(_dataset_problems(root, problems))
    return found, ValidationReport(n_pairs=len(pairs), n_thresholded=n_thresholded, n_crack_free=n_crack_free)
