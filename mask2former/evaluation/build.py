"""Evaluator selection: which detectron2 evaluators score a dataset, from its metadata and the model's outputs."""
import logging
import os
from typing import Optional

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from .ytvis_evaluation import YTVISEvaluator

__all__ = ["PANOPTIC_EVALUATOR_TYPES", "build_evaluator"]

logger = logging.getLogger(__name__)

# Dataset evaluator types whose models produce panoptic, instance and semantic outputs.
PANOPTIC_EVALUATOR_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg", "mapillary_vistas_panoptic_seg")


def build_evaluator(cfg, dataset_name: str, output_folder: Optional[str] = None):
    """
    Evaluators chosen by the dataset's ``MetadataCatalog`` ``evaluator_type`` and by which outputs
    the model produces (``MODEL.MASK_FORMER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON``).
    Instance predictions are evaluated on masks only ("segm"): Mask2Former predicts no boxes of its own.
    Results go to ``output_folder`` (default ``OUTPUT_DIR/inference``).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    test = cfg.MODEL.MASK_FORMER.TEST

    if evaluator_type == "ytvis":
        return YTVISEvaluator(dataset_name, output_dir=output_folder)

    evaluators = []
    if evaluator_type == "sem_seg":
        _require(test.SEMANTIC_ON, dataset_name, evaluator_type, "SEMANTIC_ON")
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    elif evaluator_type == "coco":
        _require(test.INSTANCE_ON, dataset_name, evaluator_type, "INSTANCE_ON")
        evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), distributed=True,
                                        output_dir=output_folder))
    elif evaluator_type in PANOPTIC_EVALUATOR_TYPES:
        if test.PANOPTIC_ON:
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if test.INSTANCE_ON:
            evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), distributed=True,
                                            output_dir=output_folder))
        if test.SEMANTIC_ON:
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    elif evaluator_type == "cityscapes_instance":
        _require(test.INSTANCE_ON, dataset_name, evaluator_type, "INSTANCE_ON")
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    elif evaluator_type == "cityscapes_sem_seg":
        _require(test.SEMANTIC_ON, dataset_name, evaluator_type, "SEMANTIC_ON")
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif evaluator_type == "cityscapes_panoptic_seg":
        if test.PANOPTIC_ON:
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if test.INSTANCE_ON:
            evaluators.append(CityscapesInstanceEvaluator(dataset_name))
        if test.SEMANTIC_ON:
            evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    else:
        message = (
            f"No evaluator for dataset '{dataset_name}': its metadata evaluator_type is "
            f"{evaluator_type!r}; Mask2Former knows 'sem_seg', 'coco', 'ytvis', "
            f"{', '.join(repr(t) for t in PANOPTIC_EVALUATOR_TYPES)}, 'cityscapes_instance', "
            "'cityscapes_sem_seg' and 'cityscapes_panoptic_seg'."
        )
        logger.warning(message)
        raise NotImplementedError(message)

    if not evaluators:
        raise ValueError(
            f"Dataset '{dataset_name}' (evaluator_type '{evaluator_type}') needs at least one of "
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON / INSTANCE_ON / SEMANTIC_ON to be True"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

def _require(flag: bool, dataset_name: str, evaluator_type: str, key: str) -> None:
    if not flag:
        raise ValueError(
            f"Dataset '{dataset_name}' is evaluated as '{evaluator_type}', which needs "
            f"MODEL.MASK_FORMER.TEST.{key} True"
        )
