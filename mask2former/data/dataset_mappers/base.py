"""
What all Mask2Former mappers share: the bad-item policy, reading the image, augmenting, padding and the
output format.

Output of every mapper (the data contract of the MaskFormer model)::

    "image":     uint8 tensor (C, H, W) in INPUT.FORMAT
    "height", "width": the original image size (from the dataset dict, else read off the image)
    "sem_seg":   int64 tensor (H, W), the dataset's ignore label where unlabeled or padded (if the item has one)
    "instances": Instances of image size (H, W) with
                 gt_classes int64 (N,) contiguous class ids,
                 gt_masks   bool (N, H, W), one non-empty mask per segment,
                 gt_boxes   Boxes (N, 4) tight around the masks (LSJ mappers only)

Padding (training only; at test time the model pads): to a multiple of ``INPUT.SIZE_DIVISIBILITY`` (when
> 0), or to ``INPUT.IMAGE_SIZE`` squared for the LSJ mappers, at the bottom and right. Images are padded
with 128, close to the pixel mean, so that padding looks like the model's own zero padding after
normalisation (the value the official mappers use); semantic maps with the ignore label; masks with 0.
"""
import copy
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from .augmentation import build_lsj_augmentations
from .checks import BadDatasetItemError, read_image, record_skipped_item

__all__ = ["MaskFormerMapperBase"]

logger = logging.getLogger(__name__)


def _pad(tensor: torch.Tensor, size: Tuple[int, int], value) -> torch.Tensor:
    """Pad the last two dims of ``tensor`` at the bottom and right to ``size`` with ``value``."""
    h, w = tensor.shape[-2:]
    if (h, w) == tuple(size):
        return tensor
    out = tensor.new_full(tuple(tensor.shape[:-2]) + tuple(size), value)
    out[..., :h, :w] = tensor
    return out


class MaskFormerMapperBase:
    """
    Base of the Mask2Former mappers. A subclass implements ``from_config(cls, cfg, is_train=True)`` (the
    configurable ``__init__`` is this one) and :meth:`map` (a deep copy of the dataset dict -> the output
    dict) with the helpers below; calling the mapper applies the bad-item policy: a
    :class:`BadDatasetItemError` propagates, or with ``skip_bad_items`` is logged and counted and the mapper
    returns None (detectron2's MapDataset then maps another item).
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool,
        augmentations: Sequence[T.Augmentation],
        image_format: str,
        num_classes: int,
        ignore_label: int,
        size_divisibility: int = -1,
        fixed_size: int = 0,
        image_pad_value: float = 128.0,
        with_boxes: bool = False,
        skip_bad_items: bool = False,
    ):
        """
        Args:
            is_train: training (augment, pad, require annotations) or test (resize and format only).
            augmentations: applied to the image and, with the same random parameters, to the annotations.
            image_format: INPUT.FORMAT.
            num_classes: contiguous class ids must lie in [0, num_classes).
            ignore_label: unlabeled value of semantic maps.
            size_divisibility: pad height and width to a multiple of this in training (<= 0: no padding).
            fixed_size: pad to (fixed_size, fixed_size) in training instead (LSJ; 0: off).
            image_pad_value: the value of padded image pixels.
            with_boxes: also give ``instances.gt_boxes`` from the masks.
            skip_bad_items: skip bad items (return None) instead of raising.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.fixed_size = fixed_size
        self.image_pad_value = image_pad_value
        self.with_boxes = with_boxes
        self.skip_bad_items = skip_bad_items
        # Does a crop need a semantic map to choose its window?
        self.crop_needs_sem_seg = any(
            isinstance(a, T.RandomCrop_CategoryAreaConstraint) and a.single_category_max_area < 1.0
            for a in augmentations
        )
        mode = "training" if is_train else "inference"
        logger.info(f"[{type(self).__name__}] augmentations in {mode}: {list(augmentations)}")

    @staticmethod
    def base_config(cfg, is_train: bool) -> dict:
        """The constructor arguments every mapper reads from the config (all but the augmentations)."""
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if len(names):
            ignore_label = MetadataCatalog.get(names[0]).get("ignore_label", ignore_label)
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "skip_bad_items": bool(cfg.DATALOADER.SKIP_BAD_ITEMS),
        }

    @staticmethod
    def lsj_config(cfg, is_train: bool) -> dict:
        """The constructor arguments of the large-scale-jitter mappers on top of :meth:`base_config`."""
        return {
            "augmentations": build_lsj_augmentations(cfg, is_train),
            "size_divisibility": -1,
            "fixed_size": cfg.INPUT.IMAGE_SIZE,
            "with_boxes": True,
        }

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            return self.map(dataset_dict)
        except BadDatasetItemError as e:
            if not self.skip_bad_items:
                raise
            record_skipped_item(e)
            return None

    def map(self, dataset_dict: dict) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for map()
    def require(self, dataset_dict: dict, keys: Sequence[str]) -> bool:
        """
        Whether the dict has all ``keys`` (the ground truth this mapper reads). Missing ground truth is
        fine at test time; in training it is a dataset/mapper mismatch, not a bad item: ValueError.
        """
        missing = [k for k in keys if k not in dataset_dict]
        if missing and self.is_train:
            raise ValueError(
                f"{type(self).__name__} needs {missing} in every dataset dict, but the dict of "
                f"'{dataset_dict.get('file_name')}' has only {sorted(dataset_dict)}: does INPUT.DATASET_MAPPER_NAME "
                "match the kind of annotations of DATASETS.TRAIN?"
            )
        return not missing

    def read_image(self, dataset_dict: dict) -> np.ndarray:
        """Read and check the image; fill in "height"/"width" from it when the dict has none."""
        if "file_name" not in dataset_dict:
            raise BadDatasetItemError(f"the dataset dict has no 'file_name' (keys: {sorted(dataset_dict)})")
        expected = None
        if "height" in dataset_dict and "width" in dataset_dict:
            expected = (dataset_dict["height"], dataset_dict["width"])
        image = read_image(dataset_dict["file_name"], self.image_format, expected)
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])
        return image

    def augment(self, image: np.ndarray, sem_seg: Optional[np.ndarray] = None):
        """Returns (image, sem_seg, transforms) after the augmentations."""
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        return aug_input.image, aug_input.sem_seg, transforms

    def padded_size(self, h: int, w: int) -> Tuple[int, int]:
        if not self.is_train:
            return h, w
        if self.fixed_size > 0:
            return max(h, self.fixed_size), max(w, self.fixed_size)
        if self.size_divisibility > 0:
            d = self.size_divisibility
            return -(-h // d) * d, -(-w // d) * d
        return h, w

    def format(
        self,
        dataset_dict: dict,
        image: np.ndarray,
        *,
        sem_seg: Optional[np.ndarray] = None,
        classes: Optional[Sequence[int]] = None,
        masks: Optional[List[np.ndarray]] = None,
    ) -> dict:
        """
        Pad and convert to the output format. image: (H, W, C) uint8; sem_seg: (H, W) or None; classes and
        masks: per-segment class ids and (H, W) bool masks, or None for no "instances". Empty masks are dropped.
        """
        h, w = image.shape[:2]
        size = self.padded_size(h, w)
        image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["image"] = _pad(image_t, size, self.image_pad_value)
        if sem_seg is not None:
            dataset_dict["sem_seg"] = _pad(torch.as_tensor(sem_seg.astype(np.int64)), size, self.ignore_label)
        if classes is not None:
            if len(masks):
                gt_masks = torch.as_tensor(np.stack([np.asarray(m, dtype=bool) for m in masks]))
            else:
                gt_masks = torch.zeros((0, h, w), dtype=torch.bool)
            keep = gt_masks.flatten(1).any(dim=1)
            instances = Instances(size)
            instances.gt_classes = torch.as_tensor(np.asarray(classes, dtype=np.int64).reshape(-1))[keep]
            instances.gt_masks = _pad(gt_masks[keep], size, False)
            if self.with_boxes:
                instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
            dataset_dict["instances"] = instances
        return dataset_dict
