"""``crackops predict``: binary masks and overlays for image files, folders or globs.

An unreadable file does not stop the run: every readable image is predicted, and
``predictions.json`` lists what was predicted, what could not be read (and why) and, when the run
was stopped part-way, which images it never reached. One photo at a time is in memory, and besides
its pixels (3 bytes a pixel) only about 8 bytes a pixel: the float32 probability map while the
model runs, then the mask and the side-by-side overlay while they are written.
"""
from __future__ import annotations

import glob
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm

from pipeline.atomic import atomic_path, write_json
from pipeline.data.folder import UnreadableFile, decode_file
from pipeline.errors import CrackopsError
from pipeline.inference.probabilities import predict_mask
from pipeline.params import Params
from pipeline.visualize import overlay_panel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SUMMARY_FILE = "predictions.json"
# Longest side of an overlay panel (photo | prediction); the mask itself is always at full size.
OVERLAY_MAX_SIDE = 4096


@dataclass
class Prediction:
    image: str
    mask: str
    overlay: str
    height: int
    width: int
    crack_fraction: float


@dataclass
class Failure:
    image: str
    reason: str


@dataclass
class PredictReport:
    """What one ``predict_images`` call did; ``not_reached`` is empty unless it was stopped part-way."""

    predictions: list[Prediction] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"predictions": [asdict(p) for p in self.predictions], "failed": [asdict(f) for f in self.failed],
                "not_reached": self.not_reached}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files from files, folders (their image files, not recursive) and glob patterns, in order."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if glob.has_magic(item):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True)) if _is_image(Path(m))]
            if not matches:
                raise CrackopsError(f"{item}: the pattern matches no image file ({', '.join(IMAGE_SUFFIXES)})")
            found += matches
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if _is_image(p))
            if not matches:
                raise CrackopsError(f"{item}: the folder holds no image file ({', '.join(IMAGE_SUFFIXES)})")
            found += matches
        elif path.is_file():
            found.append(path)
        else:
            raise CrackopsError(f"{item}: no such file, folder or matching pattern")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    stems: dict[str, Path] = {}
    for path in unique:
        if path.stem in stems:
            # Outputs are named after the stem; two inputs must not overwrite each other's masks.
            raise CrackopsError(f"{stems[path.stem]} and {path} share the name {path.stem!r}: "
                                "predict them into different --output folders")
        stems[path.stem] = path
    return unique


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 pixels, turned as the file's EXIF orientation says; UnreadableFile says why not.

    cv2.imread would hand back the decoded top of a truncated JPEG as if it were the photo.
    """
    image = decode_file(path, "image", cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy of a large photo


def write_png(path: Path, array: np.ndarray, *, consume: bool = False) -> None:
    """A grayscale or RGB array as PNG, atomically; ``consume`` lets it reorder an RGB array's channels in place."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR, dst=array if consume else None)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer)  # the encoded array as it is: no bytes copy of it


def _predict_one(model: nn.Module, params: Params, path: Path, out_dir: Path, threshold: float,
                 tile: int | None, overlap: int | None) -> Prediction:
    """Mask and overlay of one image, freeing each full-size array as soon as it is written."""
    image = read_rgb(path)
    height, width = image.shape[:2]
    mask = predict_mask(model, image, params.data.img_size, threshold, params.eval.batch_size,
                        tile=tile, overlap=overlap)
    crack_fraction = np.count_nonzero(mask) / mask.size
    mask *= 255  # as written; the overlay reads any nonzero value as crack
    mask_file, overlay_file = out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png"
    write_png(mask_file, mask)
    # The overlay is for looking at: a large photo's is scaled down, so it costs no photo-sized memory.
    scale = OVERLAY_MAX_SIDE / max(height, 2 * width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)  # any crack pixel stays visible
    panel = overlay_panel(image, None, mask)
    del image, mask  # the panel holds the image now
    write_png(overlay_file, panel, consume=True)
    return Prediction(str(path), mask_file.name, overlay_file.name, height, width, float(crack_fraction))


def predict_images(
    model: nn.Module,
    params: Params,
    paths: list[Path],
    out_dir: Path,
    *,
    threshold: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    progress: bool = True,
) -> PredictReport:
    """Write ``<stem>_mask.png`` (0/255, the image's size) and ``<stem>_overlay.png`` per image, one at a time.

    ``params`` are the model's own (input size, threshold default, batch size). A file that cannot
    be read is recorded in the report and skipped; ``predictions.json`` is written (atomically) even
    when an error or an interrupt stops the run, so it always says what the masks on disk are.
    """
    threshold = params.eval.threshold if threshold is None else threshold
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport()
    try:
        for path in tqdm(paths, desc="predict", unit="image", disable=None if progress else True):
            try:
                report.predictions.append(_predict_one(model, params, path, out_dir, threshold, tile, overlap))
            except UnreadableFile as error:
                report.failed.append(Failure(str(path), error.reason))
    finally:
        report.not_reached = [str(path) for path in paths[len(report.predictions) + len(report.failed):]]
        write_json(out_dir / SUMMARY_FILE, report.as_json())
    return report
