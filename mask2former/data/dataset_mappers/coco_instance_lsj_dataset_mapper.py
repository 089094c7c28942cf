"""COCO instance segmentation with large-scale jitter ("coco_instance_lsj")."""
from .build import MAPPER_REGISTRY
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper

__all__ = ["COCOInstanceLSJDatasetMapper"]


@MAPPER_REGISTRY.register_as("coco_instance_lsj")
class COCOInstanceLSJDatasetMapper(MaskFormerInstanceDatasetMapper):
    """
    The instance mapper with LSJ augmentation (flip, ResizeScale in [INPUT.MIN_SCALE, INPUT.MAX_SCALE] of
    INPUT.IMAGE_SIZE, random crop) and training outputs padded to INPUT.IMAGE_SIZE squared; instances
    also get ``gt_boxes`` tight around their masks.
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(cls.base_config(cfg, is_train), **cls.lsj_config(cfg, is_train))
