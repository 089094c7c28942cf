"""Instance segmentation mapper ("mask_former_instance"): one binary mask per non-crowd instance."""
from typing import List, Tuple

import numpy as np
from detectron2.structures import polygons_to_bitmask

from .augmentation import build_mask_former_augmentations
from .build import MAPPER_REGISTRY
from .checks import BadDatasetItemError, check_annotation_list, check_category_id, check_is_crowd, decode_segmentation
from .base import MaskFormerMapperBase

__all__ = ["MaskFormerInstanceDatasetMapper", "parse_instance_annotations", "render_instance_masks"]


def parse_instance_annotations(annotations: List[dict], image_hw: Tuple[int, int], num_classes: int,
                               file_name: str) -> List[tuple]:
    """
    Check the non-crowd annotations of one image (contiguous "category_id", "segmentation" as polygons,
    RLE or mask of the image's size). Returns ``(class id, kind, data)`` per instance, ``kind`` and ``data``
    as from :func:`~.checks.decode_segmentation`.
    """
    parsed = []
    for i, obj in enumerate(check_annotation_list(annotations, "'annotations'", file_name)):
        where = f"annotation {i}"
        if check_is_crowd(obj, where, file_name):
            continue
        class_id = check_category_id(obj.get("category_id"), num_classes, where, file_name)
        if "segmentation" not in obj:
            raise BadDatasetItemError(f"{where} has no 'segmentation'", file_name)
        kind, data = decode_segmentation(obj["segmentation"], image_hw, where, file_name)
        parsed.append((class_id, kind, data))
    return parsed


def render_instance_masks(parsed: List[tuple], transforms, image_hw: Tuple[int, int]) -> List[np.ndarray]:
    """
    Masks (H, W) bool of the parsed instances after ``transforms``: polygons are transformed as coordinates
    and rasterised at the output size, masks are transformed as segmentations (nearest neighbour).
    """
    h, w = image_hw
    masks = []
    for _, kind, data in parsed:
        if kind == "polygons":
            polygons = transforms.apply_polygons([p.reshape(-1, 2) for p in data])
            masks.append(polygons_to_bitmask([p.reshape(-1) for p in polygons], h, w))
        else:
            masks.append(transforms.apply_segmentation(data).astype(bool))
    return masks


@MAPPER_REGISTRY.register_as("mask_former_instance")
class MaskFormerInstanceDatasetMapper(MaskFormerMapperBase):
    """
    Reads "file_name" and "annotations" (detectron2 instance dicts with contiguous "category_id" and
    "segmentation" as polygons or RLE; crowd annotations are left out), augments, and gives one mask per
    instance. The crop, having no semantic map, is a plain RandomCrop. Output: "image", "instances".
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(
            cls.base_config(cfg, is_train),
            augmentations=build_mask_former_augmentations(cfg, is_train, category_area_constraint=False),
        )

    def map(self, dataset_dict: dict) -> dict:
        image = self.read_image(dataset_dict)
        has_annotations = self.require(dataset_dict, ["annotations"])
        parsed = []
        if has_annotations:
            annotations = dataset_dict.pop("annotations")
            parsed = parse_instance_annotations(annotations, image.shape[:2], self.num_classes,
                                                dataset_dict["file_name"])
        image, _, transforms = self.augment(image)
        if not has_annotations:
            return self.format(dataset_dict, image)
        masks = render_instance_masks(parsed, transforms, image.shape[:2])
        return self.format(dataset_dict, image, classes=[p[0] for p in parsed], masks=masks)
