"""
Dataset mappers, chosen by ``INPUT.DATASET_MAPPER_NAME`` through :func:`build_dataset_mapper`:

    mask_former_semantic   MaskFormerSemanticDatasetMapper   (semantic label maps)
    mask_former_instance   MaskFormerInstanceDatasetMapper   (polygon / RLE instances)
    mask_former_panoptic   MaskFormerPanopticDatasetMapper   (COCO-format panoptic PNGs)
    coco_instance_lsj      COCOInstanceLSJDatasetMapper      (instances, large-scale jitter)
    coco_panoptic_lsj      COCOPanopticLSJDatasetMapper      (panoptic, large-scale jitter)
    ytvis                  YTVISDatasetMapper                (video clips, YouTube-VIS format)
    mask_classifier        MaskClassifierDatasetMapper       (labelled mask prompts, for MaskClassifier)

Bad dataset items raise :class:`BadDatasetItemError`, or are skipped with ``DATALOADER.SKIP_BAD_ITEMS``
(see ``checks``).
"""
from .build import MAPPER_REGISTRY, build_dataset_mapper
from .checks import BadDatasetItemError, num_skipped_items, reset_skipped_items, skipped_items_summary
from .augmentation import ColorAugSSD, ColorAugSSDTransform, PhotometricTransform
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .ytvis_dataset_mapper import YTVISDatasetMapper
from .coco_instance_lsj_dataset_mapper import COCOInstanceLSJDatasetMapper
from .coco_panoptic_lsj_dataset_mapper import COCOPanopticLSJDatasetMapper
from .mask_classifier_dataset_mapper import MaskClassifierDatasetMapper

__all__ = [
    "MAPPER_REGISTRY",
    "build_dataset_mapper",
    "BadDatasetItemError",
    "num_skipped_items",
    "reset_skipped_items",
    "skipped_items_summary",
    "ColorAugSSD",
    "ColorAugSSDTransform",
    "PhotometricTransform",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "YTVISDatasetMapper",
    "MaskClassifierDatasetMapper",
]
