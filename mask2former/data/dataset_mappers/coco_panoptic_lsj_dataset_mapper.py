"""COCO panoptic segmentation with large-scale jitter ("coco_panoptic_lsj")."""
from .build import MAPPER_REGISTRY
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper

__all__ = ["COCOPanopticLSJDatasetMapper"]


@MAPPER_REGISTRY.register_as("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper(MaskFormerPanopticDatasetMapper):
    """
    The panoptic mapper with LSJ augmentation (flip, ResizeScale in [INPUT.MIN_SCALE, INPUT.MAX_SCALE] of
    INPUT.IMAGE_SIZE, random crop) and training outputs padded to INPUT.IMAGE_SIZE squared; instances
    also get ``gt_boxes`` tight around their masks.
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(cls.base_config(cfg, is_train), **cls.lsj_config(cfg, is_train))
