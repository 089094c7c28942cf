"""Test-time augmentation for semantic segmentation."""
import copy
from typing import Dict, List

import torch
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.data.detection_utils import read_image
from detectron2.modeling import DatasetMapperTTA

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """
    Wrap a model that returns ``[{"sem_seg": (K, height, width)}, ...]`` so that each image is
    predicted at every ``TEST.AUG.MIN_SIZES`` scale (shorter side, longer side capped at
    ``TEST.AUG.MAX_SIZE``), and also horizontally flipped if ``TEST.AUG.FLIP``. The flipped
    predictions are flipped back and all predictions (already at the original ``height, width``,
    as the model resizes its output to those) are averaged.

    Call it like the model: a list of dataset dicts in, a list of ``{"sem_seg": (K, H, W)}`` out.
    """

    def __init__(self, cfg, model: nn.Module, tta_mapper=None, batch_size: int = 1):
        """
        Args:
            cfg: config with ``TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP}`` and ``INPUT.FORMAT``.
            model: the semantic segmentation model (a DistributedDataParallel is unwrapped).
            tta_mapper: callable mapping one dataset dict to a list of augmented dicts, each with a
                "transforms" field; defaults to detectron2's ``DatasetMapperTTA(cfg)``.
            batch_size: number of augmented images per forward pass.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if batch_size < 1:
            raise ValueError(f"SemanticSegmentorWithTTA: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size
        self.input_format = cfg.INPUT.FORMAT

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
    def _predict_one(self, dataset_dict: Dict) -> Dict[str, torch.Tensor]:
        aug_inputs = self.tta_mapper(dataset_dict)
        if not aug_inputs:
            raise ValueError("SemanticSegmentorWithTTA: the TTA mapper returned no augmented inputs "
                             "(check TEST.AUG.MIN_SIZES)")
        total = None
        for start in range(0, len(aug_inputs), self.batch_size):
            batch = aug_inputs[start:start + self.batch_size]
            # the model must not see the "transforms" field (it is not part of the input format)
            outputs = self.model([{k: v for k, v in x.items() if k != "transforms"} for x in batch])
            for x, out in zip(batch, outputs):
                if "sem_seg" not in out:
                    raise ValueError(
                        "SemanticSegmentorWithTTA: the model returned no 'sem_seg' "
                        "(set MODEL.MASK_FORMER.TEST.SEMANTIC_ON True to use TEST.AUG)"
                    )
                sem_seg = out["sem_seg"]
                expected = (dataset_dict["height"], dataset_dict["width"])
                if tuple(sem_seg.shape[-2:]) != expected:
                    raise ValueError(
                        f"SemanticSegmentorWithTTA: the model returned a sem_seg of shape "
                        f"{tuple(sem_seg.shape)}, expected (K, {expected[0]}, {expected[1]}) "
                        "(the input's height and width)"
                    )
                if any(isinstance(t, HFlipTransform) for t in x["transforms"].transforms):
                    sem_seg = sem_seg.flip(dims=[2])
                total = sem_seg.clone() if total is None else total + sem_seg
        return {"sem_seg": total / len(aug_inputs)}
