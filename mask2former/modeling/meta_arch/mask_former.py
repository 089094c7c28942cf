"""The ``MaskFormer`` meta-architecture: backbone -> pixel decoder -> transformer decoder -> masks + classes."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import ImageList
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn

from ..criterion import build_criterion
from ..heads.crop_classifier import CropClassifier
from ..postprocessing import MaskUpsampler, instance_inference, panoptic_inference, semantic_inference


def dataset_metadata(cfg):
    """Metadata of the dataset the model's classes come from: DATASETS.TRAIN[0], else DATASETS.TEST[0]."""
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    return MetadataCatalog.get(names[0]) if names else None


def channels_last(images: ImageList) -> ImageList:
    """The padded batch in the backbone's memory layout (values and shape unchanged)."""
    return ImageList(images.tensor.contiguous(memory_format=torch.channels_last), images.image_sizes)


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Mask2Former for images.

    Input: a list of dicts with "image" (C, H, W) in INPUT.FORMAT, optional "height"/"width" (output size),
    and in training "instances" with gt_classes and gt_masks (N, H, W).
    Output in training: dict of weighted losses. In inference: per image a dict with "sem_seg" (K, H, W),
    "panoptic_seg" (segment ids (H, W) int32, segments_info) and "instances", as TEST.*_ON select.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, sem_seg_head: nn.Module, criterion: nn.Module, num_queries: int,
                 object_mask_threshold: float, overlap_threshold: float, metadata, size_divisibility: int,
                 sem_seg_postprocess_before_inference: bool, pixel_mean: Tuple[float], pixel_std: Tuple[float],
                 semantic_on: bool, panoptic_on: bool, instance_on: bool, test_topk_per_image: int,
                 instance_score_threshold: float = 0.0, instance_nms_threshold: float = 1.0,
                 crop_classifier: Optional[CropClassifier] = None, crop_classifier_weight: float = 0.0):
        super().__init__()
        # Channels-last convolutions are faster on CPUs (docs/PERFORMANCE.md, "Training step"). Only the layout
        # changes; preprocess_image hands the backbone the same layout.
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.metadata = metadata
        self.size_divisibility = backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.test_topk_per_image = test_topk_per_image
        self.instance_score_threshold = instance_score_threshold
        if not 0.0 <= instance_nms_threshold <= 1.0:
            raise ValueError("MODEL.MASK_FORMER.TEST.INSTANCE_NMS_THRESH must lie in [0, 1] (1 = no suppression), "
                             f"got {instance_nms_threshold}")
        self.instance_nms_threshold = instance_nms_threshold
        if panoptic_on and not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
            raise ValueError(
                "MODEL.MASK_FORMER.TEST.PANOPTIC_ON needs the dataset metadata "
                "'thing_dataset_id_to_contiguous_id' (which classes are things); the dataset named by "
                "DATASETS.TRAIN[0] (or DATASETS.TEST[0]) has none")
        # Ours, off by default: thing classes refined by a classifier of each mask's box crop.
        self.crop_classifier = crop_classifier
        self.crop_classifier_weight = crop_classifier_weight

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        test = cfg.MODEL.MASK_FORMER.TEST
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": build_criterion(cfg),
            "num_queries": cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "metadata": dataset_metadata(cfg),
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": test.SEMANTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "instance_score_threshold": test.INSTANCE_SCORE_THRESH,
            "instance_nms_threshold": test.INSTANCE_NMS_THRESH,
            **cls.crop_classifier_from_config(cfg),
        }

    @staticmethod
    def crop_classifier_from_config(cfg):
        cc = cfg.MODEL.MASK_FORMER.CROP_CLASSIFIER
        if cc.WEIGHT < 0:
            raise ValueError(f"MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT must be >= 0 (0 = off), got {cc.WEIGHT}")
        if cc.WEIGHT == 0:
            return {}
        metadata = dataset_metadata(cfg)
        thing_map = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) if metadata is not None else None
        if not thing_map:
            raise ValueError("MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT > 0 needs thing classes: the dataset named by "
                             "DATASETS.TRAIN[0] (or DATASETS.TEST[0]) has no 'thing_dataset_id_to_contiguous_id'")
        head = CropClassifier(sorted(thing_map.values()), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, size=cc.SIZE,
                              widths=tuple(cc.WIDTHS), context=cc.CONTEXT, max_crops=cc.MAX_CROPS)
        return {"crop_classifier": head, "crop_classifier_weight": cc.WEIGHT}

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def thing_ids(self):
        return list(self.metadata.thing_dataset_id_to_contiguous_id.values())

    def preprocess_image(self, batched_inputs):
        """Normalise and pad to a common size divisible by ``size_divisibility``: ImageList (N, C, H', W')."""
        return self.normalize_and_pad([x["image"] for x in batched_inputs])

    def normalize_and_pad(self, images):
        """Normalise (C, H, W) images on the model's device and pad them into one batch in the backbone's layout."""
        images = [(x.to(self.device) - self.pixel_mean) / self.pixel_std for x in images]
        return channels_last(ImageList.from_tensors(images, self.size_divisibility))

    def forward(self, batched_inputs):
        if not self.training:
            # The decoder's masks go to post-processing at their own resolution with the padded size, so that
            # each task upsamples only the queries it keeps.
            return [
                self.inference_single(q["pred_logits"], q["pred_masks"], q["image_size"],
                                      x.get("height", q["image_size"][0]), x.get("width", q["image_size"][1]),
                                      padded_size=q["padded_size"])
                for q, x in zip(self.predict_queries(batched_inputs, upsample=False), batched_inputs)
            ]
        if "instances" not in batched_inputs[0]:
            raise ValueError("training inputs need 'instances' (gt_classes, gt_masks); check the dataset "
                             "mapper (INPUT.DATASET_MAPPER_NAME)")
        images = self.preprocess_image(batched_inputs)
        targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs], images)
        # The targets also reach the decoder, whose denoising queries (MODEL.MASK_FORMER.DN) are noised targets.
        outputs = self.sem_seg_head(self.backbone(images.tensor), targets=targets)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        losses = {k: v * weights[k] for k, v in losses.items() if k in weights}
        if self.crop_classifier is not None:
            losses["loss_crop_cls"] = self.crop_classifier.loss(images.tensor, targets) * self.crop_classifier_weight
        return losses

    def predict_queries(self, batched_inputs, upsample=True):
        """The decoder's final query predictions, before any post-processing.

        Returns:
            per image a dict with "pred_logits" (Q, K+1) class logits (log-probabilities, with the thing
            classes refined, when MODEL.MASK_FORMER.CROP_CLASSIFIER is on), "pred_masks" (Q, H', W') mask logits
            upsampled to the padded batch size (H', W') (with ``upsample=False``: at the decoder's resolution,
            1/4 of it), "padded_size" (H', W') and "image_size" (h, w) of the unpadded input in it.
        """
        images = self.preprocess_image(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        padded_size = tuple(images.tensor.shape[-2:])
        mask_pred_results = outputs["pred_masks"]
        if self.crop_classifier is not None:
            outputs["pred_logits"] = self.crop_classifier.refine(images.tensor, outputs["pred_logits"],
                                                                 mask_pred_results)
        if upsample:
            mask_pred_results = F.interpolate(mask_pred_results, size=padded_size, mode="bilinear",
                                              align_corners=False)
        return [{"pred_logits": mask_cls, "pred_masks": mask_pred, "image_size": image_size,
                 "padded_size": padded_size}
                for mask_cls, mask_pred, image_size in zip(outputs["pred_logits"], mask_pred_results,
                                                           images.image_sizes)]

    def inference_single(self, mask_cls, mask_pred, image_size, height, width, tasks=None, padded_size=None):
        """Post-process one image: mask_cls (Q, K+1), mask_pred (Q, H', W') at the padded input size, or at the
        decoder's resolution when ``padded_size`` (H', W') is given (each task then upsamples only the queries
        it keeps, with the same results).

        ``tasks``: the outputs to compute, a subset of ("semantic", "panoptic", "instance"); by default those
        that MODEL.MASK_FORMER.TEST.{SEMANTIC,PANOPTIC,INSTANCE}_ON enable.
        """
        if tasks is None:
            tasks = [t for t, on in (("semantic", self.semantic_on), ("panoptic", self.panoptic_on),
                                     ("instance", self.instance_on)) if on]
        unknown = set(tasks) - {"semantic", "panoptic", "instance"}
        if unknown:
            raise ValueError(f"inference_single: unknown tasks {sorted(unknown)}; choose from 'semantic', "
                             "'panoptic', 'instance'")
        result = {}
        padded_size = tuple(mask_pred.shape[-2:]) if padded_size is None else tuple(padded_size)
        to_padded = MaskUpsampler(padded_size)
        upsample = (MaskUpsampler(padded_size, image_size, (height, width))
                    if self.sem_seg_postprocess_before_inference else to_padded)
        mask_cls = mask_cls.to(mask_pred)
        if "semantic" in tasks:
            # Semantic needs every query at full resolution (official order: resize the logits, then combine);
            # the other tasks then take their queries from it instead of upsampling them again.
            mask_pred = retry_if_cuda_oom(upsample)(mask_pred)
            upsample = None
            r = retry_if_cuda_oom(semantic_inference)(mask_cls, mask_pred)
            if not self.sem_seg_postprocess_before_inference:
                r = retry_if_cuda_oom(MaskUpsampler(None, image_size, (height, width)))(r)
            result["sem_seg"] = r
        if "panoptic" in tasks:
            result["panoptic_seg"] = retry_if_cuda_oom(panoptic_inference)(
                mask_cls, mask_pred, thing_ids=self.thing_ids, object_mask_threshold=self.object_mask_threshold,
                overlap_threshold=self.overlap_threshold, upsample=upsample)
        if "instance" in tasks:
            result["instances"] = retry_if_cuda_oom(instance_inference)(
                mask_cls, mask_pred, topk=self.test_topk_per_image,
                thing_ids=self.thing_ids if self.panoptic_on else None,
                score_threshold=self.instance_score_threshold, nms_threshold=self.instance_nms_threshold,
                upsample=upsample)
        return result

    def prepare_targets(self, targets, images):
        """Pad each image's gt masks to the batch's padded size: list of {"labels" (N,), "masks" (N, H', W')}."""
        h_pad, w_pad = images.tensor.shape[-2:]
        new_targets = []
        for t in targets:
            gt_masks = t.gt_masks
            gt_masks = gt_masks.tensor if hasattr(gt_masks, "tensor") else gt_masks
            padded = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))
            padded[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            new_targets.append({"labels": t.gt_classes, "masks": padded})
        return new_targets
