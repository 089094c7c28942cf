"""Test-time augmentation: semantic maps averaged, instance predictions merged by mask NMS."""
import copy
from typing import Dict, List

import torch
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.data.detection_utils import read_image
from detectron2.modeling import DatasetMapperTTA
from detectron2.structures import Instances

from ..modeling.postprocessing import mask_nms, masks_to_boxes

__all__ = ["MaskFormerWithTTA", "SemanticSegmentorWithTTA"]


class MaskFormerWithTTA(nn.Module):
    """
    Wrap a model that returns ``[{"sem_seg": (K, height, width), "instances": Instances}, ...]`` (either or
    both) so that each image is predicted at every ``TEST.AUG.MIN_SIZES`` scale (shorter side, longer side
    capped at ``TEST.AUG.MAX_SIZE``), and also horizontally flipped if ``TEST.AUG.FLIP``. The flipped
    predictions are flipped back; all predictions are already at the original ``height, width`` (the model
    resizes its outputs to those). Then:

    * ``sem_seg``: the average over all augmented inputs;
    * ``instances`` (ours; the official code augments semantic segmentation only): the union of all
      augmented inputs' detections, de-duplicated by per-class mask NMS at ``TEST.AUG.INSTANCE_NMS_THRESH``
      (:func:`~mask2former.modeling.postprocessing.mask_nms`), at most ``TEST.DETECTIONS_PER_IMAGE`` of
      them, highest score first: how detectron2's ``GeneralizedRCNNWithTTA`` merges boxes, with masks.

    Panoptic outputs are not augmented. Call it like the model: a list of dataset dicts in, a list of
    ``{"sem_seg": (K, H, W), "instances": Instances}`` out (the keys the model returned).
    """

    def __init__(self, cfg, model: nn.Module, tta_mapper=None, batch_size: int = 1):
        """
        Args:
            cfg: config with ``TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP, INSTANCE_NMS_THRESH}``,
                ``TEST.DETECTIONS_PER_IMAGE`` and ``INPUT.FORMAT``.
            model: the model (a DistributedDataParallel is unwrapped).
            tta_mapper: callable mapping one dataset dict to a list of augmented dicts, each with a
                "transforms" field; defaults to detectron2's ``DatasetMapperTTA(cfg)``.
            batch_size: number of augmented images per forward pass.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size
        self.input_format = cfg.INPUT.FORMAT
        self.nms_threshold = cfg.TEST.AUG.get("INSTANCE_NMS_THRESH", 0.5)
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"TEST.AUG.INSTANCE_NMS_THRESH must lie in [0, 1], got {self.nms_threshold}")
        self.max_detections = cfg.TEST.DETECTIONS_PER_IMAGE

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        return [self._predict_one(self._with_image(x)) for x in batched_inputs]

    def _with_image(self, dataset_dict: Dict) -> Dict:
        """Read the image if the dict only names its file (as in a raw dataset dict)."""
        dataset_dict = copy.copy(dataset_dict)
        if "image" not in dataset_dict:
            image = read_image(dataset_dict["file_name"], self.input_format)
            dataset_dict["image"] = torch.from_numpy(image.transpose(2, 0, 1).copy())
        if "height" not in dataset_dict:
            dataset_dict["height"], dataset_dict["width"] = dataset_dict["image"].shape[1:]
        return dataset_dict

    @torch.no_grad()
    def _predict_one(self, dataset_dict: Dict) -> Dict:
        aug_inputs = self.tta_mapper(dataset_dict)
        if not aug_inputs:
            raise ValueError(f"{type(self).__name__}: the TTA mapper returned no augmented inputs "
                             "(check TEST.AUG.MIN_SIZES)")
        expected = (dataset_dict["height"], dataset_dict["width"])
        sem_seg_sum, instances = None, []
        for start in range(0, len(aug_inputs), self.batch_size):
            batch = aug_inputs[start:start + self.batch_size]
            # the model must not see the "transforms" field (it is not part of the input format)
            outputs = self.model([{k: v for k, v in x.items() if k != "transforms"} for x in batch])
            for x, out in zip(batch, outputs):
                if "sem_seg" not in out and "instances" not in out:
                    raise ValueError(
                        f"{type(self).__name__}: the model returned neither 'sem_seg' nor 'instances' (set "
                        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON or INSTANCE_ON True to use TEST.AUG)"
                    )
                flipped = any(isinstance(t, HFlipTransform) for t in x["transforms"].transforms)
                if "sem_seg" in out:
                    sem_seg = self._check_size(out["sem_seg"], "sem_seg", "(K, {}, {})", expected)
                    sem_seg = sem_seg.flip(dims=[2]) if flipped else sem_seg
                    sem_seg_sum = sem_seg.clone() if sem_seg_sum is None else sem_seg_sum + sem_seg
                if "instances" in out:
                    inst = out["instances"]
                    masks = self._check_size(inst.pred_masks, "instances.pred_masks", "(N, {}, {})", expected)
                    instances.append((masks.flip(dims=[2]) if flipped else masks, inst.scores, inst.pred_classes))
        result = {}
        if sem_seg_sum is not None:
            result["sem_seg"] = sem_seg_sum / len(aug_inputs)
        if instances:
            result["instances"] = self._merge_instances(instances, expected)
        return result

    def _check_size(self, tensor: torch.Tensor, name: str, shape: str, expected) -> torch.Tensor:
        if tuple(tensor.shape[-2:]) != tuple(expected):
            raise ValueError(
                f"{type(self).__name__}: the model returned a {name} of shape {tuple(tensor.shape)}, expected "
                f"{shape.format(*expected)} (the input's height and width)"
            )
        return tensor

    def _merge_instances(self, instances, image_size) -> Instances:
        """Union of the augmented inputs' detections, per-class mask NMS, the best ``max_detections``."""
        masks, scores, classes = (torch.cat(parts) for parts in zip(*instances))
        keep = mask_nms(masks, scores, classes, self.nms_threshold)[: self.max_detections]
        result = Instances(tuple(image_size))
        result.pred_masks = masks[keep]
        result.pred_boxes = masks_to_boxes(result.pred_masks)
        result.scores = scores[keep]
        result.pred_classes = classes[keep]
        return result


# The official repository's name for the (semantic-only) wrapper.
SemanticSegmentorWithTTA = MaskFormerWithTTA
