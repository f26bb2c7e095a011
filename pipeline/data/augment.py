"""Training augmentation: geometric always-safe transforms, plus optional colour and blur."""
from __future__ import annotations

import albumentations as A
import cv2

# Small angles only: RandomRotate90 covers the rest, and large angles push reflected borders in.
_ROTATE_LIMIT = 15


def build_train_augmentation(
    flip: bool = True,
    rotate: bool = True,
    color_blur: bool = False,
    seed: int | None = None,
    crop_size: int | None = None,
) -> A.Compose:
    """Augmentation for training pairs; masks are resampled nearest-neighbour so they stay binary.

    ``color_blur`` adds the colour-and-blur set of the DeepLabV3 crack study (colour jitter,
    brightness/contrast, hue/saturation, Gaussian and motion blur, each with moderate
    probability). ``seed`` makes the sequence of random draws reproducible. ``crop_size`` trains
    on a random ``crop_size`` square of each image (the DeepLabV3 study's random crop; fully
    convolutional models only, validation and test images stay whole).
    """
    transforms: list[A.BasicTransform] = [A.RandomCrop(crop_size, crop_size)] if crop_size else []
    if flip:
        transforms += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if rotate:
        transforms += [
            A.RandomRotate90(p=0.5),
            A.Rotate(
                limit=_ROTATE_LIMIT,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                # Reflection continues the texture; a constant fill would add straight edges.
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
        ]
    if color_blur:
        transforms += [
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.3),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.3),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=15, val_shift_limit=10, p=0.3),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            A.MotionBlur(blur_limit=(3, 5), p=0.2),
        ]
    return A.Compose(transforms, mask_interpolation=cv2.INTER_NEAREST, seed=seed)
