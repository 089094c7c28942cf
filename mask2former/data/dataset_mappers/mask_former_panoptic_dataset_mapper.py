"""Panoptic segmentation mapper ("mask_former_panoptic"): one binary mask per non-crowd segment."""
from typing import List, Tuple

import numpy as np

from ..datasets.loading import rgb2id
from .augmentation import build_mask_former_augmentations
from .build import MAPPER_REGISTRY
from .checks import (
    BadDatasetItemError,
    check_annotation_list,
    check_category_id,
    check_is_crowd,
    check_label_values,
    read_label_map,
    read_panoptic_rgb,
)
from .base import MaskFormerMapperBase

__all__ = ["MaskFormerPanopticDatasetMapper", "parse_segments_info"]


def parse_segments_info(segments_info: List[dict], num_classes: int, file_name: str) -> List[Tuple[int, int, bool]]:
    """Check "segments_info" (contiguous "category_id"); returns (segment id, class id, iscrowd) per segment."""
    parsed = []
    for i, seg in enumerate(check_annotation_list(segments_info, "'segments_info'", file_name)):
        where = f"segments_info[{i}]"
        seg_id = seg.get("id")
        if isinstance(seg_id, bool) or not isinstance(seg_id, (int, np.integer)) or seg_id <= 0:
            raise BadDatasetItemError(f"{where} has id {seg_id!r}; expected a positive integer", file_name)
        class_id = check_category_id(seg.get("category_id"), num_classes, f"{where} (id {seg_id})", file_name)
        parsed.append((int(seg_id), class_id, check_is_crowd(seg, f"{where} (id {seg_id})", file_name)))
    return parsed


@MAPPER_REGISTRY.register_as("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerMapperBase):
    """
    Reads "file_name", "pan_seg_file_name" (COCO panoptic PNG) with "segments_info" (contiguous
    "category_id"), and "sem_seg_file_name" when present; augments them together and gives one mask per
    non-crowd segment. The crop's single-category area constraint uses the semantic map, or one derived
    from the panoptic segments when the item has none. Output: "image", "instances", and "sem_seg" when the
    item has "sem_seg_file_name".
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(
            cls.base_config(cfg, is_train),
            augmentations=build_mask_former_augmentations(cfg, is_train, category_area_constraint=True),
        )

    def _category_map(self, pan_rgb: np.ndarray, segments: List[Tuple[int, int, bool]]) -> np.ndarray:
        """(H, W) class ids of all segments (crowd included), the ignore label elsewhere."""
        small = max(self.num_classes - 1, self.ignore_label) <= 255
        category = np.full(pan_rgb.shape[:2], self.ignore_label, dtype=np.uint8 if small else np.float32)
        ids = rgb2id(pan_rgb)
        for seg_id, class_id, _ in segments:
            category[ids == seg_id] = class_id
        return category

    def map(self, dataset_dict: dict) -> dict:
        image = self.read_image(dataset_dict)
        file_name = dataset_dict["file_name"]
        dataset_dict.pop("annotations", None)
        sem_seg_path = dataset_dict.pop("sem_seg_file_name", None)
        sem_seg = None if sem_seg_path is None else read_label_map(sem_seg_path, image.shape[:2], file_name)
        if not self.require(dataset_dict, ["pan_seg_file_name", "segments_info"]):
            image, sem_seg, _ = self.augment(image, sem_seg)
            return self.format(dataset_dict, image, sem_seg=sem_seg)

        pan_path = dataset_dict.pop("pan_seg_file_name")
        segments = parse_segments_info(dataset_dict.pop("segments_info"), self.num_classes, file_name)
        pan_rgb = read_panoptic_rgb(pan_path, image.shape[:2], file_name)

        crop_map = sem_seg
        if crop_map is None and self.crop_needs_sem_seg:
            crop_map = self._category_map(pan_rgb, segments)
        image, crop_map, transforms = self.augment(image, crop_map)
        sem_seg = None if sem_seg is None else crop_map
        if sem_seg is not None:
            check_label_values(np.unique(sem_seg), self.num_classes, self.ignore_label, sem_seg_path, file_name)

        ids = rgb2id(transforms.apply_segmentation(pan_rgb))  # nearest neighbour on the RGB-coded ids
        classes, masks = [], []
        for seg_id, class_id, iscrowd in segments:
            if not iscrowd:
                classes.append(class_id)
                masks.append(ids == seg_id)
        return self.format(dataset_dict, image, sem_seg=sem_seg, classes=classes, masks=masks)
