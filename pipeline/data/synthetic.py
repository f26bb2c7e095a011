"""Built-in synthetic crack images: the default data on a fresh clone, no download needed.

Two domains: ``pavement`` (asphalt or concrete, the training domain) and ``masonry`` (brick or
stone walls, a visibly different domain for zero-shot evaluation). Each image holds 1-3 thin,
branching, meandering dark cracks plus a random mix of distractors that are never in the mask
(saw-cut joints, stains, shadows, road marks, mortar joints), so a model cannot score well by
simply marking every dark line.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.atomic import atomic_dir

DOMAINS = ("pavement", "masonry")

# Widths and lengths are tuned at this size and scale linearly with the image side.
_REF_SIZE = 256
# cv2 drawing takes integer coordinates; 2 fractional bits keep thin curves smooth.
_SHIFT = 2
_SUB = 1 << _SHIFT
# Keeps the crack-free choice independent of every per-image stream ([seed, i]).
_CRACK_FREE_STREAM = 0xC0FFEE


# ---------------------------------------------------------------------------------------------
# Small building blocks
# ---------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    # A Python float, not np.float64: NumPy 2 would otherwise promote float32 images to float64.
    return float(rng.uniform(low, high))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish noise with features about ``size / cells`` pixels wide."""
    cells = max(2, cells)
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _fine_noise(rng: np.random.Generator, size: int, sigma: float = 0.0) -> np.ndarray:
    """Per-pixel zero-mean, unit-variance grain."""
    # Uniform, not normal: several times faster to draw, and grain shape is not visible either way.
    noise = (rng.random((size, size), dtype=np.float32) - 0.5) * np.float32(np.sqrt(12.0))
    if sigma > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise


def _line_through(size: int, point: np.ndarray, angle: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """End points (in _SHIFT fixed point) of a line through ``point`` that crosses the whole image."""
    d = np.array([np.cos(angle), np.sin(angle)]) * size * 2
    a, b = (point - d) * _SUB, (point + d) * _SUB
    return (int(a[0]), int(a[1])), (int(b[0]), int(b[1]))


def _axis_biased_angle(rng: np.random.Generator) -> float:
    # Joints and road marks usually run along or across the road, photographed roughly aligned.
    if rng.random() < 0.7:
        return float(rng.integers(0, 2) * np.pi / 2 + rng.normal(0, 0.08))
    return _u(rng, 0, np.pi)


# ---------------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------------


def _asphalt(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    base = _u(rng, 80, 125)
    grey = (
        base
        + 7 * _smooth_noise(rng, size, 4)
        + 5 * _smooth_noise(rng, size, 16)
        + 11 * _fine_noise(rng, size, 0.6)
    )
    # Aggregate stones: blobs a few pixels wide, some light, some dark voids between them.
    stones = _smooth_noise(rng, size, int(size / max(1.5, 2.5 * scale)))
    grey += np.where(stones > 1.1, _u(rng, 25, 45), 0).astype(np.float32)
    grey -= np.where(stones < -1.4, _u(rng, 20, 35), 0).astype(np.float32)
    grey = cv2.GaussianBlur(grey, (0, 0), 0.5)
    tint = (1.0 + rng.normal(0, 0.02, 3)).astype(np.float32)
    return grey[..., None] * tint


def _concrete(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    base = _u(rng, 150, 195)
    grey = base + 9 * _smooth_noise(rng, size, 3) + 4 * _smooth_noise(rng, size, 24) + 4 * _fine_noise(rng, size, 0.7)
    # Pores: sparse pits of varied depth (a uniform dot pattern looks printed), about 1 px at
    # 256 and proportionally wider (and rarer per pixel) on larger images.
    u = rng.random((size, size), dtype=np.float32)
    rate = _u(rng, 0.001, 0.004) / max(scale, 1.0) ** 2
    pits = np.where(u < rate, 0.5 + 0.5 * u / rate, 0).astype(np.float32)
    diameter = int(round(1.2 * scale))
    if diameter > 1:
        pits = cv2.dilate(pits, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter)))
    pits = cv2.GaussianBlur(pits, (0, 0), 0.6)
    grey -= _u(rng, 80, 140) * np.clip(pits * (2.5 if diameter <= 1 else 1.3), 0, 1)
    tint = (np.array([1.0, 0.99, 0.96]) + rng.normal(0, 0.015, 3)).astype(np.float32)
    return grey[..., None] * tint


def _masonry(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Brick or stone blocks in running bond with a mortar grid."""
    brick = rng.random() < 0.6
    h = size * _u(rng, 0.09, 0.15) if brick else size * _u(rng, 0.14, 0.22)
    w = h * (_u(rng, 2.2, 3.2) if brick else _u(rng, 1.3, 2.0))
    mortar = max(2.0, _u(rng, 2.0, 4.0) * scale)
    if brick:
        palette = np.array([_u(rng, 140, 175), _u(rng, 60, 85), _u(rng, 42, 62)], np.float32)
    else:
        # Sandstone / limestone: beige, with red clearly above green so the cast light keeps it warm.
        palette = _u(rng, 180, 215) * np.array([1.0, _u(rng, 0.8, 0.86), _u(rng, 0.66, 0.74)], np.float32)

    # Slight warp so joints are hand-laid, not ruler-straight.
    ys = np.arange(size, dtype=np.float32)[:, None] + 1.2 * scale * _smooth_noise(rng, size, 5)
    xs = np.arange(size, dtype=np.float32)[None, :] + 1.2 * scale * _smooth_noise(rng, size, 5)
    rows = np.floor(ys / h).astype(np.int32)
    n_rows = int(rows.max()) + 2
    rows = np.clip(rows, 0, n_rows - 1)
    row_shift = (np.arange(n_rows) % 2) * w / 2 + rng.uniform(-0.1, 0.1, n_rows) * w + _u(rng, 0, w)
    xs_shifted = xs + row_shift.astype(np.float32)[rows]
    cols = np.floor(xs_shifted / w).astype(np.int32)
    n_cols = int(cols.max()) + 2

    # One colour per block, looked up through a flat index (much faster than 2-D fancy indexing).
    shade = 1 + rng.normal(0, 0.08, (n_rows * n_cols, 1))
    colours = (palette * shade + rng.normal(0, 4, (n_rows * n_cols, 3))).astype(np.float32)
    img = np.take(colours, rows * n_cols + np.clip(cols, 0, n_cols - 1), axis=0)
    texture = 8 * _smooth_noise(rng, size, int(size / (6 * scale))) + 6 * _fine_noise(rng, size, 0.6)
    img += texture[..., None]

    joint = ((ys - rows * h) < mortar) | ((xs_shifted - cols * w) < mortar)
    joint_soft = cv2.GaussianBlur(joint.astype(np.float32), (0, 0), 0.7)[..., None]
    # Recessed mortar reads darker than the blocks (a strong distractor), flush mortar lighter.
    mortar_grey = _u(rng, 55, 95) if rng.random() < 0.55 else _u(rng, 170, 205)
    mortar_col = np.float32(mortar_grey) * np.array([1.0, 0.97, 0.92], np.float32)
    mortar_col = mortar_col + 0.75 * texture[..., None]
    return img * (1 - joint_soft) + mortar_col * joint_soft


def _side_light(rng: np.random.Generator, size: int, strength: tuple[float, float]) -> np.ndarray:
    """Multiplicative directional light gradient (1 ± strength/2 across the image)."""
    angle = _u(rng, 0, 2 * np.pi)
    lin = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = float(np.cos(angle)) * lin[None, :] + float(np.sin(angle)) * lin[:, None]
    return (1 + _u(rng, *strength) * ramp)[..., None]


# ---------------------------------------------------------------------------------------------
# Distractors (never in the mask)
# ---------------------------------------------------------------------------------------------


def _road_mark(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    colour = np.array([235, 235, 228] if rng.random() < 0.6 else [228, 186, 40], np.float32)
    width = size * _u(rng, 0.07, 0.16)
    centre = rng.uniform(0.15, 0.85, 2) * size
    angle = _axis_biased_angle(rng)
    band = np.zeros((size, size), np.float32)
    a, b = _line_through(size, centre, angle)
    cv2.line(band, a, b, 1.0, thickness=max(1, int(width)), lineType=cv2.LINE_AA, shift=_SHIFT)
    # Worn paint lets the aggregate show through.
    wear = np.clip(0.85 + 0.25 * _smooth_noise(rng, size, 20), 0, 1)
    alpha = (cv2.GaussianBlur(band, (0, 0), 0.8) * wear)[..., None]
    paint = colour * (0.8 + 0.2 * img / 128)
    img[:] = img * (1 - alpha) + paint * alpha


def _saw_cut(rng: np.random.Generator, img: np.ndarray, size: int, crack_width: float) -> None:
    # Wider and perfectly straight: the model must learn shape, not darkness.
    width = max(3, int(round(crack_width * _u(rng, 1.6, 2.6))))
    centre = rng.uniform(0.1, 0.9, 2) * size
    a, b = _line_through(size, centre, _axis_biased_angle(rng))
    band = np.zeros((size, size), np.float32)
    cv2.line(band, a, b, 1.0, thickness=width, lineType=cv2.LINE_AA, shift=_SHIFT)
    band = cv2.GaussianBlur(band, (0, 0), 0.6)[..., None]
    img *= 1 - _u(rng, 0.35, 0.6) * band


def _stains(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    low = max(16, size // 4)
    blobs = np.zeros((low, low), np.float32)
    for _ in range(rng.integers(1, 4)):
        centre = (int(_u(rng, 0, low)), int(_u(rng, 0, low)))
        axes = (int(low * _u(rng, 0.05, 0.18)) + 1, int(low * _u(rng, 0.05, 0.18)) + 1)
        cv2.ellipse(blobs, centre, axes, _u(rng, 0, 180), 0, 360, _u(rng, 0.6, 1.0), -1)
    blobs = cv2.GaussianBlur(blobs, (0, 0), low * 0.03 + 0.8)
    blobs *= np.clip(1 + 0.5 * cv2.resize(rng.standard_normal((6, 6), dtype=np.float32), (low, low)), 0, 1.5)
    alpha = cv2.resize(blobs, (size, size), interpolation=cv2.INTER_LINEAR)[..., None]
    # Oil and water stains are slightly brownish.
    img *= 1 - _u(rng, 0.2, 0.4) * np.clip(alpha, 0, 1) * np.array([1.0, 1.04, 1.1], np.float32)


def _shadow(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    low = max(16, size // 8)
    lin = np.linspace(-1, 1, low, dtype=np.float32)
    angle = _u(rng, 0, 2 * np.pi)
    dist = float(np.cos(angle)) * lin[None, :] + float(np.sin(angle)) * lin[:, None] - _u(rng, -0.5, 0.5)
    softness = _u(rng, 0.04, 0.15)
    if rng.random() < 0.5:
        shade = 1 / (1 + np.exp(-dist / softness))  # half-plane: a building or vehicle
    else:
        half = _u(rng, 0.1, 0.3)  # band: a pole or tree trunk
        shade = 1 / (1 + np.exp((np.abs(dist) - half) / softness))
    shade = cv2.resize(shade.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)[..., None]
    # Skylight makes shadows a little bluish.
    img *= 1 - _u(rng, 0.25, 0.5) * shade * np.array([1.0, 0.98, 0.9], np.float32)


# ---------------------------------------------------------------------------------------------
# Cracks
# ---------------------------------------------------------------------------------------------


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float, step: float) -> np.ndarray:
    """Meandering polyline: a drifting heading plus per-step jitter (cracks zig-zag between grains)."""
    n = max(3, int(length / step))
    drift = np.cumsum(rng.normal(0, 0.10, n))
    angles = heading + drift + rng.normal(0, 0.35, n)
    steps = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return start + np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def _width_profile(rng: np.random.Generator, n: int, w_max: float, w_start: float | None = None) -> np.ndarray:
    """Widths along a curve: smooth random variation in [1, w_max], tapering to 1 px at the tip."""
    knots = rng.uniform(0.2, 1.0, 5)
    smooth = np.interp(np.linspace(0, 4, n), np.arange(5), knots)
    t = np.linspace(0, 1, n)
    if w_start is None:
        taper = np.sin(np.pi * t) ** 0.5  # both ends are tips
    else:
        taper = (1 - t) ** 0.6  # a branch starts at its parent's width
        smooth = np.maximum(smooth, (w_start - 1) / max(w_max - 1, 1e-6) * (1 - t))
    return 1 + (w_max - 1) * smooth * taper


def _draw_curve(depth: np.ndarray, pts: np.ndarray, widths: np.ndarray, rng: np.random.Generator) -> None:
    """Draw segment by segment so width and depth can vary along the curve."""
    fixed = np.round(pts * _SUB).astype(np.int64)
    shade = np.clip(np.interp(np.linspace(0, 3, len(pts)), np.arange(4), rng.uniform(0.65, 1.0, 4)), 0, 1)
    for i in range(len(pts) - 1):
        cv2.line(
            depth,
            (int(fixed[i, 0]), int(fixed[i, 1])),
            (int(fixed[i + 1, 0]), int(fixed[i + 1, 1])),
            float(shade[i]),
            thickness=max(1, int(round(widths[i]))),
            lineType=cv2.LINE_8,
            shift=_SHIFT,
        )


def _crack(rng: np.random.Generator, depth: np.ndarray, size: int, scale: float) -> None:
    """One crack: a main meandering curve with 0-3 branches, drawn into ``depth`` (0 = none)."""
    w_max = max(1.0, _u(rng, 2.5, 4.3) * scale)
    length = size * _u(rng, 0.6, 1.2)
    step = max(2.0, 3.0 * scale)
    heading = _u(rng, 0, 2 * np.pi)
    centre = rng.uniform(0.2, 0.8, 2) * size
    # Walk both ways from an interior point so most of the crack lands inside the image.
    fwd = _walk(rng, centre, heading, length / 2, step)
    back = _walk(rng, centre, heading + np.pi, length / 2, step)
    main = np.vstack([back[::-1], fwd[1:]])
    widths = _width_profile(rng, len(main), w_max)
    _draw_curve(depth, main, widths, rng)

    for _ in range(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1])):
        i = int(_u(rng, 0.15, 0.85) * (len(main) - 1))
        tangent = main[min(i + 1, len(main) - 1)] - main[max(i - 1, 0)]
        side = rng.choice([-1.0, 1.0])
        b_heading = np.arctan2(tangent[1], tangent[0]) + side * _u(rng, np.radians(25), np.radians(70))
        branch = _walk(rng, main[i], b_heading, length * _u(rng, 0.15, 0.45), step)
        b_widths = _width_profile(rng, len(branch), max(1.0, 0.75 * w_max), w_start=widths[i] * 0.8)
        _draw_curve(depth, branch, b_widths, rng)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def render_sample(
    rng: np.random.Generator,
    size: int,
    domain: str = "pavement",
    crack_free: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic image and its mask: (RGB uint8 HxWx3, uint8 HxW with values 0/1)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: expected one of {', '.join(DOMAINS)}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    scale = size / _REF_SIZE

    if domain == "pavement":
        asphalt = rng.random() < 0.6
        img = _asphalt(rng, size, scale) if asphalt else _concrete(rng, size, scale)
        crack_w = 4.0 * scale
        if rng.random() < (0.35 if asphalt else 0.15):
            _road_mark(rng, img, size)
        if rng.random() < 0.35:
            _saw_cut(rng, img, size, crack_w)
        light = _side_light(rng, size, (0.0, 0.15))
    else:
        img = _masonry(rng, size, scale)
        # Walls are side-lit and warmer than overhead-lit road surfaces.
        light = _side_light(rng, size, (0.3, 0.6)) * np.array([1.05, 1.0, 0.9], np.float32)

    # Crack-free images always get a distractor so they are hard negatives, not blank ones.
    want_stain, want_shadow = rng.random() < 0.4, rng.random() < 0.3
    if crack_free and not (want_stain or want_shadow):
        want_stain = True
    if want_stain:
        _stains(rng, img, size)

    depth = np.zeros((size, size), np.float32)
    if not crack_free:
        for _ in range(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])):
            _crack(rng, depth, size, scale)
        # Soft edges in the image; the mask keeps exactly the drawn pixels.
        dark = np.maximum(depth * 0.9, cv2.GaussianBlur(depth, (0, 0), 0.8 * max(scale, 0.5)) * 1.2)
        img *= (1 - _u(rng, 0.5, 0.75) * np.clip(dark, 0, 1))[..., None]

    if want_shadow:
        _shadow(rng, img, size)
    img *= light
    img += _u(rng, 1.0, 3.5) * _fine_noise(rng, size)[..., None]
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    mask = (depth > 0).astype(np.uint8)
    return image, mask


def _crack_free_indices(n_images: int, n_free: int, seed: int) -> set[int]:
    order = np.random.default_rng([seed, _CRACK_FREE_STREAM, n_images]).permutation(n_images)
    return {int(i) for i in order[:n_free]}


def generate_dataset(
    out_dir: Path,
    n_images: int,
    size: int,
    seed: int,
    domain: str = "pavement",
    crack_free_fraction: float = 0.1,
) -> Path:
    """Write ``out_dir/images/{i:04d}.png`` and ``out_dir/masks/{i:04d}.png`` (0/255), atomically."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: expected one of {', '.join(DOMAINS)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= crack_free_fraction <= 1.0:
        raise ValueError(f"crack_free_fraction must be in [0, 1], got {crack_free_fraction}")

    out_dir = Path(out_dir)
    free = _crack_free_indices(n_images, round(n_images * crack_free_fraction), seed)
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for i in tqdm(range(n_images), desc=f"synthetic {domain}", unit="img", disable=None):
            image, mask = render_sample(np.random.default_rng([seed, i]), size, domain, crack_free=i in free)
            _write_png(tmp / "images" / f"{i:04d}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            _write_png(tmp / "masks" / f"{i:04d}.png", mask * 255)
    return out_dir


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())
