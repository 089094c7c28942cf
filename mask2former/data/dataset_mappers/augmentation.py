"""
Augmentations of the Mask2Former mappers, built from the config.

- :func:`build_mask_former_augmentations` (semantic, instance and panoptic mappers): ResizeShortestEdge
  (``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN`` / ``MIN_SIZE_TRAIN_SAMPLING``), then a random crop
  (``INPUT.CROP.*``; with a semantic map, no single class may cover more than
  ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`` of it, ignoring ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``), then SSD's
  colour distortion (``INPUT.COLOR_AUG_SSD``), then a flip (``INPUT.RANDOM_FLIP``).
- :func:`build_lsj_augmentations` (COCO LSJ mappers): flip, ResizeScale in
  ``[INPUT.MIN_SCALE, INPUT.MAX_SCALE]`` of ``INPUT.IMAGE_SIZE``, and a random crop of at most
  ``IMAGE_SIZE`` x ``IMAGE_SIZE`` (the mappers pad the result to that size themselves).

At test time both give detectron2's usual ResizeShortestEdge(``MIN_SIZE_TEST``, ``MAX_SIZE_TEST``).
"""
from typing import List, Optional

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

__all__ = [
    "PhotometricTransform",
    "ColorAugSSD",
    "ColorAugSSDTransform",
    "build_flip",
    "build_mask_former_augmentations",
    "build_lsj_augmentations",
]


class PhotometricTransform(Transform):
    """Base of transforms that change pixel values only: coordinates and segmentations pass through."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()


class ColorAugSSDTransform(PhotometricTransform):
    """
    SSD's photometric distortion (Liu et al., "SSD: Single Shot MultiBox Detector", 2016) with fixed,
    already sampled parameters: add ``brightness_delta`` to all channels, multiply by ``contrast_alpha``
    (before the HSV steps, or after them when ``contrast_last``), multiply saturation by
    ``saturation_alpha`` and shift hue by ``hue_delta`` (OpenCV's uint8 hue range, 0-179). A parameter that
    is None skips its step; values are clipped to [0, 255] after each step. Geometry is unchanged, so
    segmentations and coordinates pass through.
    """

    def __init__(
        self,
        img_format: str,
        brightness_delta: Optional[float] = None,
        contrast_alpha: Optional[float] = None,
        saturation_alpha: Optional[float] = None,
        hue_delta: Optional[int] = None,
        contrast_last: bool = False,
    ):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"SSD colour augmentation needs an RGB or BGR image (INPUT.FORMAT), got {img_format!r}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """img: uint8 (H, W, 3) in ``img_format``."""
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"SSD colour augmentation expects a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
        bgr = img if self.img_format == "BGR" else img[:, :, ::-1]
        x = bgr.astype(np.float32)
        if self.brightness_delta is not None:
            x = np.clip(x + self.brightness_delta, 0, 255)
        if self.contrast_alpha is not None and not self.contrast_last:
            x = np.clip(x * self.contrast_alpha, 0, 255)
        if self.saturation_alpha is not None or self.hue_delta is not None:
            hsv = cv2.cvtColor(x.astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.int32)
            if self.saturation_alpha is not None:
                hsv[:, :, 1] = np.clip(np.round(hsv[:, :, 1] * self.saturation_alpha), 0, 255)
            if self.hue_delta is not None:
                hsv[:, :, 0] = (hsv[:, :, 0] + int(self.hue_delta)) % 180
            x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
        if self.contrast_alpha is not None and self.contrast_last:
            x = np.clip(x * self.contrast_alpha, 0, 255)
        out = np.round(x).astype(np.uint8)
        return np.ascontiguousarray(out if self.img_format == "BGR" else out[:, :, ::-1])


class ColorAugSSD(T.Augmentation):
    """
    Samples :class:`ColorAugSSDTransform`: each of brightness (delta uniform in ±``brightness_delta``),
    contrast and saturation (factor uniform in the given range) and hue (integer shift in ±``hue_delta``)
    is applied with probability 1/2; contrast comes first or last with probability 1/2.
    """

    def __init__(
        self,
        img_format: str,
        brightness_delta: float = 32.0,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta: int = 18,
    ):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.COLOR_AUG_SSD needs INPUT.FORMAT 'RGB' or 'BGR', got {img_format!r}")
        self._init(locals())

    def get_transform(self, image) -> Transform:
        def maybe(sample):
            return sample() if np.random.rand() < 0.5 else None

        return ColorAugSSDTransform(
            self.img_format,
            brightness_delta=maybe(lambda: float(np.random.uniform(-self.brightness_delta, self.brightness_delta))),
            contrast_alpha=maybe(lambda: float(np.random.uniform(*self.contrast_range))),
            saturation_alpha=maybe(lambda: float(np.random.uniform(*self.saturation_range))),
            hue_delta=maybe(lambda: int(np.random.randint(-self.hue_delta, self.hue_delta + 1))),
            contrast_last=bool(np.random.rand() < 0.5),
        )


def build_flip(cfg) -> List[T.Augmentation]:
    """RandomFlip from ``INPUT.RANDOM_FLIP`` ("horizontal", "vertical" or "none")."""
    mode = cfg.INPUT.RANDOM_FLIP
    if mode == "none":
        return []
    if mode not in ("horizontal", "vertical"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {mode!r}")
    return [T.RandomFlip(horizontal=mode == "horizontal", vertical=mode == "vertical")]


def _test_resize(cfg) -> List[T.Augmentation]:
    return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]


def build_mask_former_augmentations(cfg, is_train: bool, category_area_constraint: bool) -> List[T.Augmentation]:
    """
    The augmentations of the semantic, instance and panoptic mappers. ``category_area_constraint``: the
    mapper has a semantic map to constrain the crop with (RandomCrop_CategoryAreaConstraint); otherwise
    the crop is a plain RandomCrop.
    """
    if not is_train:
        return _test_resize(cfg)
    augs = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        if category_area_constraint:
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                )
            )
        else:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSD(cfg.INPUT.FORMAT))
    return augs + build_flip(cfg)


def build_lsj_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """Large-scale jitter: flip, ResizeScale, FixedSizeCrop without padding (the mapper pads)."""
    if not is_train:
        return _test_resize(cfg)
    size = cfg.INPUT.IMAGE_SIZE
    return build_flip(cfg) + [
        T.ResizeScale(min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE, target_height=size,
                      target_width=size),
        # pad=False: detectron2 versions disagree on the padding value of segmentations, so we pad ourselves.
        T.FixedSizeCrop(crop_size=(size, size), pad=False),
    ]
