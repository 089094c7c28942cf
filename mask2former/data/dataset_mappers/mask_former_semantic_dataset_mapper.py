"""Semantic segmentation mapper ("mask_former_semantic"): one binary mask per class present."""
import numpy as np

from .augmentation import build_mask_former_augmentations
from .build import MAPPER_REGISTRY
from .checks import check_label_values, read_label_map
from .base import MaskFormerMapperBase

__all__ = ["MaskFormerSemanticDatasetMapper"]


@MAPPER_REGISTRY.register_as("mask_former_semantic")
class MaskFormerSemanticDatasetMapper(MaskFormerMapperBase):
    """
    Reads "file_name" and "sem_seg_file_name" (a label map of contiguous class ids, the dataset's ignore
    label where unlabeled), augments both, and turns the label map into one mask per class present
    (ignore excluded). Output: "image", "sem_seg", "instances" (see ``utils``). At test time an item
    without "sem_seg_file_name" gives just the resized image.
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(
            cls.base_config(cfg, is_train),
            augmentations=build_mask_former_augmentations(cfg, is_train, category_area_constraint=True),
        )

    def map(self, dataset_dict: dict) -> dict:
        image = self.read_image(dataset_dict)
        file_name = dataset_dict["file_name"]
        dataset_dict.pop("annotations", None)
        if not self.require(dataset_dict, ["sem_seg_file_name"]):
            image, _, _ = self.augment(image)
            return self.format(dataset_dict, image)

        path = dataset_dict.pop("sem_seg_file_name")
        sem_seg = read_label_map(path, image.shape[:2], file_name)
        image, sem_seg, _ = self.augment(image, sem_seg)

        labels = np.unique(sem_seg)
        check_label_values(labels, self.num_classes, self.ignore_label, path, file_name)
        classes = labels[labels != self.ignore_label].astype(np.int64)
        masks = [sem_seg == c for c in classes]
        return self.format(dataset_dict, image, sem_seg=sem_seg, classes=classes, masks=masks)
