"""``crackops predict``: binary masks and overlays for image files, folders or globs."""
from __future__ import annotations

import glob
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import CrackopsError
from pipeline.params import Params
from pipeline.visualize import overlay_panel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SUMMARY_FILE = "predictions.json"


@dataclass
class Prediction:
    image: str
    mask: str
    overlay: str
    height: int
    width: int
    crack_fraction: float


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
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CrackopsError(f"{path}: not a readable image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_png(path: Path, array: np.ndarray) -> None:
    """A grayscale or RGB array as PNG, atomically."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.tobytes())


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
) -> list[Prediction]:
    """Write ``<stem>_mask.png`` (0/255, the image's size) and ``<stem>_overlay.png`` per image, one at a time.

    ``params`` are the model's own (input size, threshold default, batch size).
    """
    from pipeline.tracking.pyfunc import predict_probabilities

    threshold = params.eval.threshold if threshold is None else threshold
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[Prediction] = []
    for path in tqdm(paths, desc="predict", unit="image", disable=None if progress else True):
        image = read_rgb(path)
        prob = predict_probabilities(model, [image], params.data.img_size, params.eval.batch_size,
                                     tile=tile, overlap=overlap)[0]
        mask = (prob >= threshold).astype(np.uint8)
        mask_file, overlay_file = out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png"
        write_png(mask_file, mask * 255)
        write_png(overlay_file, overlay_panel(image, None, mask))
        results.append(Prediction(str(path), mask_file.name, overlay_file.name, image.shape[0], image.shape[1],
                                  float(mask.mean())))
    write_json(out_dir / SUMMARY_FILE, [asdict(item) for item in results])
    return results
