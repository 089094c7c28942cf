"""Test-time augmentation: semantic maps averaged, instance queries grouped across augmentations and averaged."""
import copy
from typing import Dict, List, Tuple

import torch
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.data.detection_utils import read_image
from detectron2.modeling import DatasetMapperTTA

from ..modeling.postprocessing import resize_to_output

__all__ = ["MaskFormerWithTTA", "SemanticSegmentorWithTTA", "fuse_query_predictions"]


def fuse_query_predictions(mask_cls: torch.Tensor, mask_pred: torch.Tensor,
                           iou_threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Group the queries of P augmented predictions of one image into objects and average each group.

    In order of score (best class probability x mean mask probability inside the mask), each query not yet in a
    group starts one and takes from every other augmentation the free query whose binary mask (logit > 0)
    overlaps it most, if that IoU exceeds ``iou_threshold``: at most one query per augmentation. A group's class
    distribution is the mean over all P augmentations, an augmentation without a member voting "no object";
    its mask probability is the mean over its members. An object seen by every augmentation with the same class
    keeps its score; one that only some see, or see as different classes, scores lower.

    Cost: the mask IoU of every pair of the P x Q queries, (P Q)^2 x H x W multiply-adds, on the inputs' device
    (docs/PERFORMANCE.md, "Test-time augmentation").

    Args:
        mask_cls: (P, Q, K+1) class logits, the last class "no object".
        mask_pred: (P, Q, H, W) mask logits, all at the same output size (flips undone).
        iou_threshold: in [0, 1).
    Returns:
        (G, K+1) class logits and (G, H, W) mask logits of the G <= P x Q groups (the log of the averaged
        probabilities, and their logits): the model's own post-processing applies to them unchanged.
    """
    if mask_cls.dim() != 3 or mask_pred.dim() != 4 or mask_cls.shape[:2] != mask_pred.shape[:2]:
        raise ValueError(f"fuse_query_predictions: expected (P, Q, K+1) class logits and (P, Q, H, W) mask logits, "
                         f"got {tuple(mask_cls.shape)} and {tuple(mask_pred.shape)}")
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"fuse_query_predictions: iou_threshold must lie in [0, 1), got {iou_threshold}")
    num_aug, num_queries = mask_cls.shape[:2]
    class_probs = mask_cls.float().softmax(-1).flatten(0, 1)  # (N, K+1), N = P x Q
    mask_probs = mask_pred.float().sigmoid().flatten(0, 1)  # (N, H, W)
    binary = (mask_pred > 0).flatten(0, 1).flatten(1).float()  # (N, H x W)
    area = binary.sum(1)
    mask_scores = (mask_probs.flatten(1) * binary).sum(1) / area.clamp(min=1.0)
    scores = class_probs[:, :-1].max(1).values * mask_scores
    inter = binary @ binary.T
    iou = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)).view(-1, num_aug, num_queries)
    aug_of = torch.arange(num_aug, device=mask_cls.device).repeat_interleave(num_queries)

    free = torch.ones(num_aug * num_queries, dtype=torch.bool, device=mask_cls.device)
    fused_cls, fused_masks = [], []
    for seed in scores.argsort(descending=True).tolist():
        if not free[seed]:
            continue
        # the best free overlapping query of each augmentation; none from the seed's own
        overlap = iou[seed].masked_fill(~free.view(num_aug, num_queries), -1.0)
        overlap[aug_of[seed]] = -1.0
        best_iou, best = overlap.max(1)
        joining = (torch.arange(num_aug, device=best.device) * num_queries + best)[best_iou > iou_threshold]
        members = torch.cat([torch.tensor([seed], device=best.device), joining])
        free[members] = False
        probs = class_probs[members].sum(0)
        probs[-1] += num_aug - len(members)  # the augmentations that saw nothing here
        fused_cls.append(probs / num_aug)
        fused_masks.append(mask_probs[members].mean(0))
    fused_cls, fused_masks = torch.stack(fused_cls), torch.stack(fused_masks)
    tiny = torch.finfo(fused_cls.dtype).tiny
    return fused_cls.clamp(min=tiny).log(), torch.logit(fused_masks.clamp(tiny, 1.0 - 1e-7))


class MaskFormerWithTTA(nn.Module):
    """
    Wrap a :class:`~mask2former.modeling.MaskFormer` so that each image is predicted at every
    ``TEST.AUG.MIN_SIZES`` scale (shorter side, longer side capped at ``TEST.AUG.MAX_SIZE``), and also
    horizontally flipped if ``TEST.AUG.FLIP``. Predictions are brought to the original ``height, width`` and
    flipped back. Then, for the outputs the model's ``MODEL.MASK_FORMER.TEST.*_ON`` ask for:

    * ``sem_seg``: the average of the model's semantic outputs over all augmented inputs (as official);
    * ``instances`` (ours; the official code augments semantic segmentation only): the queries of all
      augmented inputs are grouped into objects by mask IoU (``TEST.AUG.INSTANCE_GROUP_IOU``) and averaged
      (:func:`fuse_query_predictions`), and the model's instance inference runs on the groups: its top-k
      (``TEST.DETECTIONS_PER_IMAGE``), thresholds and mask NMS.

    Panoptic outputs are not augmented. Call it like the model: a list of dataset dicts in, a list of
    ``{"sem_seg": (K, H, W), "instances": Instances}`` out (the keys the model's settings select).
    """

    def __init__(self, cfg, model: nn.Module, tta_mapper=None, batch_size: int = 1):
        """
        Args:
            cfg: config with ``TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP, INSTANCE_GROUP_IOU}`` and ``INPUT.FORMAT``.
            model: the model (a DistributedDataParallel is unwrapped): ``predict_queries`` and
                ``inference_single`` as :class:`~mask2former.modeling.MaskFormer` has them, and its
                ``semantic_on`` / ``instance_on`` switches.
            tta_mapper: callable mapping one dataset dict to a list of augmented dicts, each with a
                "transforms" field; defaults to detectron2's ``DatasetMapperTTA(cfg)``.
            batch_size: number of augmented images per forward pass.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        if not (hasattr(model, "predict_queries") and hasattr(model, "inference_single")):
            raise ValueError(f"{type(self).__name__} needs a MaskFormer-style model (predict_queries, "
                             f"inference_single); got {type(model).__name__}")
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size
        self.input_format = cfg.INPUT.FORMAT
        self.group_iou = cfg.TEST.AUG.INSTANCE_GROUP_IOU
        if not 0.0 <= self.group_iou < 1.0:
            raise ValueError(f"TEST.AUG.INSTANCE_GROUP_IOU must lie in [0, 1), got {self.group_iou}")

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
        height, width = dataset_dict["height"], dataset_dict["width"]
        semantic_on, instance_on = self.model.semantic_on, self.model.instance_on
        if not (semantic_on or instance_on):
            raise ValueError(f"{type(self).__name__}: the model computes neither semantic nor instance outputs (set "
                             "MODEL.MASK_FORMER.TEST.SEMANTIC_ON or INSTANCE_ON True to use TEST.AUG)")
        sem_seg_sum, mask_cls, mask_pred = None, [], []
        for start in range(0, len(aug_inputs), self.batch_size):
            batch = aug_inputs[start:start + self.batch_size]
            # the model must not see the "transforms" field (it is not part of the input format)
            queries = self.model.predict_queries([{k: v for k, v in x.items() if k != "transforms"} for x in batch])
            for x, q in zip(batch, queries):
                flipped = any(isinstance(t, HFlipTransform) for t in x["transforms"].transforms)
                if semantic_on:
                    sem_seg = self.model.inference_single(q["pred_logits"], q["pred_masks"], q["image_size"], height,
                                                          width, tasks=("semantic",))["sem_seg"]
                    sem_seg = self._check_size(sem_seg, "sem_seg", "(K, {}, {})", (height, width))
                    sem_seg = sem_seg.flip(dims=[2]) if flipped else sem_seg
                    sem_seg_sum = sem_seg.clone() if sem_seg_sum is None else sem_seg_sum + sem_seg
                if instance_on:
                    masks = resize_to_output(q["pred_masks"], q["image_size"], height, width)
                    mask_pred.append(masks.flip(dims=[2]) if flipped else masks)
                    mask_cls.append(q["pred_logits"].to(masks))
        result = {}
        if semantic_on:
            result["sem_seg"] = sem_seg_sum / len(aug_inputs)
        if instance_on:
            fused_cls, fused_masks = fuse_query_predictions(torch.stack(mask_cls), torch.stack(mask_pred),
                                                            self.group_iou)
            result["instances"] = self.model.inference_single(fused_cls, fused_masks, (height, width), height, width,
                                                              tasks=("instance",))["instances"]
        return result

    def _check_size(self, tensor: torch.Tensor, name: str, shape: str, expected) -> torch.Tensor:
        if tuple(tensor.shape[-2:]) != tuple(expected):
            raise ValueError(
                f"{type(self).__name__}: the model returned a {name} of shape {tuple(tensor.shape)}, expected "
                f"{shape.format(*expected)} (the input's height and width)"
            )
        return tensor


# The official repository's name for the (semantic-only) wrapper.
SemanticSegmentorWithTTA = MaskFormerWithTTA
