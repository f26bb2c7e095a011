"""Image corruptions for robustness evaluation: the two CrackSAM test sets and a blur sweep.

Each is an albumentations transform with p=1 and every random range collapsed to one value, so
the same input always gives the same output. Checked against OpenCV:

* ``HueSaturationValue`` shifts OpenCV's HSV V channel (0..255) by exactly -50, clipped at 0.
* ``GaussianBlur`` with ``blur_limit=(k, k)`` has a k x k support; its sigma is set to OpenCV's
  default for that kernel (``cv2.GaussianBlur(img, (k, k), 0)``). Results match OpenCV within
  1-2 grey levels from k = 9 up; for k <= 7 OpenCV's sigma=0 path uses fixed tabulated kernels,
  so small kernels differ by a few levels (still a k x k Gaussian).
* ``Downscale`` with ``scale_range=(0.5, 0.5)`` and cubic/cubic equals
  ``cv2.resize`` to half size and back up to the original size, bit for bit.

No step needed a cv2 fallback.
"""
from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2
import numpy as np


def _opencv_sigma(kernel: int) -> float:
    # OpenCV's sigma for a given kernel size when sigma=0 is passed (getGaussianKernel docs).
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def _gaussian(kernel: int) -> A.GaussianBlur:
    sigma = _opencv_sigma(kernel)
    return A.GaussianBlur(blur_limit=(kernel, kernel), sigma_limit=(sigma, sigma), p=1.0)


def _check_rgb_uint8(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")


# CrackSAM set 1: low light (V - 50) then a 9x9 Gaussian blur.
_LOW_LIGHT_BLUR = A.Compose(
    [
        A.HueSaturationValue(hue_shift_limit=(0, 0), sat_shift_limit=(0, 0), val_shift_limit=(-50, -50), p=1.0),
        _gaussian(9),
    ]
)

# CrackSAM set 2: 21x21 Gaussian blur, then half-size down and back up, both bicubic.
_BLUR_DOWN_UP = A.Compose(
    [
        _gaussian(21),
        A.Downscale(
            scale_range=(0.5, 0.5),
            interpolation_pair={"downscale": cv2.INTER_CUBIC, "upscale": cv2.INTER_CUBIC},
            p=1.0,
        ),
    ]
)


def low_light_blur(image: np.ndarray) -> np.ndarray:
    """CrackSAM set 1: HSV value channel -50 (clipped at 0), then a 9x9 Gaussian blur."""
    _check_rgb_uint8(image)
    return _LOW_LIGHT_BLUR(image=image)["image"]


def blur_down_up(image: np.ndarray) -> np.ndarray:
    """CrackSAM set 2: 21x21 Gaussian blur, then bicubic downscale to half size and back up."""
    _check_rgb_uint8(image)
    return _BLUR_DOWN_UP(image=image)["image"]


def gaussian_blur(image: np.ndarray, kernel: int) -> np.ndarray:
    """Gaussian blur with an odd ``kernel`` >= 3 (OpenCV's sigma for it); 0 or 1 returns a copy."""
    if kernel in (0, 1):
        return image.copy()
    if kernel < 3 or kernel % 2 == 0:
        raise ValueError(f"blur kernel must be 0, 1 or an odd integer >= 3, got {kernel}")
    return _gaussian(kernel)(image=image)["image"]


# How each corruption set is made; its name, order and report note are declared in
# pipeline/eval_schema.py (CORRUPTION_SETS), which tests/test_eval_schema.py keeps equal to these keys.
CORRUPTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "low_light_blur": low_light_blur,
    "blur_down_up": blur_down_up,
}
