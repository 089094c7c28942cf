"""The ``MaskClassifier`` meta-architecture: classes for given class-agnostic masks (e.g. Segment Anything's).

Mask2Former predicts masks and classes apart: a query's class comes from what it attended to inside its
mask. Here the masks are given. Every given mask becomes one query, initialised from the pixel decoder's
features pooled inside the mask (plus a learned embedding), that attends through the masked-attention decoder
with the given mask as its attention mask at every scale; the class head then gives K classes + "no object".
Backbone, pixel decoder and decoder layers have MaskFormer's parameter names, so a trained MaskFormer
checkpoint loads into it (MODEL.WEIGHTS); by default only the class branch and the query initialisation train
(MODEL.MASK_CLASSIFIER.TRAIN_ALL trains everything). See docs/MASK_CLASSIFIER.md.
"""
from typing import List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import Instances
from torch import nn

from ..transformer_decoder.mask2former_transformer_decoder import attention_mask_from_masks
from .mask_former import MaskFormer, dataset_metadata

__all__ = ["MaskClassifier", "pool_in_masks", "prompt_attention_masks"]

# Parameter-name prefixes that train when MODEL.MASK_CLASSIFIER.TRAIN_ALL is False.
CLASS_BRANCH_PREFIXES = ("prompt_", "sem_seg_head.predictor.class_embed.", "sem_seg_head.predictor.decoder_norm.")


def pool_in_masks(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average of ``features`` (N, C, h, w) inside ``masks`` (N, P, H, W) (any size; area-resampled to h x w,
    so a mask smaller than a feature pixel still weighs in): (N, P, C). An empty mask pools to zeros."""
    weights = F.adaptive_avg_pool2d(masks.float(), features.shape[-2:]) if masks.shape[-2:] != features.shape[-2:] \
        else masks.float()
    weights = weights.flatten(2)  # (N, P, hw)
    total = weights.sum(-1, keepdim=True).clamp(min=1e-6)
    return torch.einsum("npl,ncl->npc", weights, features.flatten(2).to(weights.dtype)) / total


def prompt_attention_masks(masks: torch.Tensor, sizes, num_heads: int) -> List[torch.Tensor]:
    """The masked-attention masks of the given masks (N, P, H, W) at each feature size: per size
    (N * num_heads, P, h * w) bool, True where blocked. The decoder's rule applies: a mask resized
    bilinearly to the level and thresholded at 0.5; one that vanishes there attends everywhere."""
    logits = masks.float() - 0.5  # sigmoid(logit) >= 0.5 exactly where the resized mask is >= 0.5
    return [attention_mask_from_masks(logits, tuple(size), num_heads) for size in sizes]


@META_ARCH_REGISTRY.register()
class MaskClassifier(nn.Module):
    """Classify given masks.

    Input: a list of dicts with "image" (C, H, W) in INPUT.FORMAT, "prompt_masks" bool (P, H, W) (P >= 0 given
    masks at the image's size), optional "height"/"width" (output size), and in training "prompt_classes"
    int64 (P,) in [0, K] (K = "no object").
    Output in training: {"loss_prompt_ce": ...}. In inference: per image {"instances": Instances of the output
    size with, per given mask in input order, "class_probs" (P, K+1), "pred_classes" (P,) the best of the K
    classes, "scores" (P,) its probability, "pred_masks" (P, height, width) the given masks, and with
    MODEL.MASK_CLASSIFIER.REFINE_MASKS "refined_masks" (P, height, width) the decoder's masks}.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, sem_seg_head: nn.Module, num_classes: int, hidden_dim: int,
                 mask_dim: int, metadata, size_divisibility: int, pixel_mean, pixel_std, train_all: bool = False,
                 no_object_weight: float = 1.0, deep_supervision: bool = True, refine_masks: bool = False):
        super().__init__()
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.sem_seg_head = sem_seg_head
        self.num_classes = num_classes
        self.metadata = metadata
        self.size_divisibility = backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        weight = torch.ones(num_classes + 1)
        weight[-1] = no_object_weight
        self.register_buffer("class_weight", weight, False)
        self.deep_supervision = deep_supervision
        self.refine_masks = refine_masks
        # The new parameters: the query initialisation.
        self.prompt_proj = nn.Linear(mask_dim, hidden_dim)
        self.prompt_feat = nn.Embedding(1, hidden_dim)  # added to every prompt query's content
        self.prompt_pos = nn.Embedding(1, hidden_dim)  # every prompt query's position embedding
        self.train_all = train_all
        if not train_all:
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith(CLASS_BRANCH_PREFIXES))

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        mc = cfg.MODEL.MASK_CLASSIFIER
        if cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME != "MultiScaleMaskedTransformerDecoder":
            raise ValueError("MaskClassifier needs MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME "
                             f"'MultiScaleMaskedTransformerDecoder', got '{cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME}'")
        if cfg.MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT > 0:
            raise ValueError("MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT > 0 is for MaskFormer; MaskClassifier labels "
                             "the given masks with its own class branch: set it to 0")
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": cfg.MODEL.MASK_FORMER.HIDDEN_DIM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "metadata": dataset_metadata(cfg),
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "train_all": mc.TRAIN_ALL,
            "no_object_weight": mc.NO_OBJECT_WEIGHT,
            "deep_supervision": mc.DEEP_SUPERVISION,
            "refine_masks": mc.REFINE_MASKS,
        }

    device = MaskFormer.device
    normalize_and_pad = MaskFormer.normalize_and_pad

    def train(self, mode: bool = True):
        # Frozen parts stay in inference mode: BatchNorm must not drift from the statistics it was trained with.
        super().train(mode)
        if mode and not self.train_all:
            self.backbone.eval()
            self.sem_seg_head.pixel_decoder.eval()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A MaskFormer checkpoint also holds its criterion's class weights and, with
        # MODEL.MASK_FORMER.CROP_CLASSIFIER, its crop classifier: parts this model has no use for.
        for k in [k for k in state_dict if k.startswith((prefix + "criterion.", prefix + "crop_classifier."))]:
            state_dict.pop(k)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, batched_inputs):
        for i, x in enumerate(batched_inputs):
            if "prompt_masks" not in x:
                raise ValueError(f"MaskClassifier input {i} has no 'prompt_masks' (P, H, W): the masks to classify")
            if tuple(x["prompt_masks"].shape[-2:]) != tuple(x["image"].shape[-2:]):
                raise ValueError(f"MaskClassifier input {i}: prompt_masks are {tuple(x['prompt_masks'].shape[-2:])}"
                                 f" but the image is {tuple(x['image'].shape[-2:])} (H, W)")
        images = self.normalize_and_pad([x["image"] for x in batched_inputs])
        counts = [len(x["prompt_masks"]) for x in batched_inputs]
        h_pad, w_pad = images.tensor.shape[-2:]
        masks = torch.zeros((len(counts), max(counts + [1]), h_pad, w_pad), dtype=torch.bool, device=self.device)
        for i, x in enumerate(batched_inputs):
            m = x["prompt_masks"].to(self.device, torch.bool)
            masks[i, : len(m), : m.shape[1], : m.shape[2]] = m
        padding = torch.arange(masks.shape[1], device=self.device)[None] >= torch.tensor(counts, device=self.device)[:, None]
        outputs = self.classify(images.tensor, masks, padding)

        if self.training:
            if any("prompt_classes" not in x for x in batched_inputs):
                raise ValueError("MaskClassifier training inputs need 'prompt_classes'; check the dataset mapper "
                                 "(INPUT.DATASET_MAPPER_NAME 'mask_classifier')")
            labels = torch.full(padding.shape, -100, dtype=torch.long, device=self.device)
            for i, x in enumerate(batched_inputs):
                labels[i, : counts[i]] = x["prompt_classes"].to(self.device)
            layers = outputs["pred_logits_per_layer"] if self.deep_supervision else outputs["pred_logits_per_layer"][-1:]
            loss = sum(F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), self.class_weight,
                                       ignore_index=-100, reduction="sum") for logits in layers)
            # Mean over prompts (weighted as cross_entropy does) and layers; zero if no image has a prompt.
            norm = self.class_weight[labels.clamp(min=0)][labels >= 0].sum().clamp(min=1.0) * len(layers)
            return {"loss_prompt_ce": loss / norm}

        results = []
        for i, x in enumerate(batched_inputs):
            n = counts[i]
            h, w = x["image"].shape[-2:]
            out_h, out_w = x.get("height", h), x.get("width", w)
            probs = outputs["pred_logits"][i, :n].float().softmax(-1)
            inst = Instances((out_h, out_w))
            inst.class_probs = probs
            inst.scores, inst.pred_classes = probs[:, :-1].max(-1)
            inst.pred_masks = self._to_output(masks[i, :n, :h, :w].float(), out_h, out_w) >= 0.5
            if self.refine_masks:
                refined = outputs["pred_masks"][i, :n].float()
                if n:
                    refined = F.interpolate(refined[None], size=(h_pad, w_pad), mode="bilinear",
                                            align_corners=False)[0, :, :h, :w]
                inst.refined_masks = self._to_output(refined, out_h, out_w) > 0
            results.append({"instances": inst})
        return results

    @staticmethod
    def _to_output(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (height, width) or x.shape[0] == 0:
            return x.new_zeros((x.shape[0], height, width)) if x.shape[0] == 0 else x
        return F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]

    def classify(self, images: torch.Tensor, masks: torch.Tensor, padding: torch.Tensor) -> dict:
        """
        Args:
            images: (N, C, H, W) normalised, padded images.
            masks: (N, P, H, W) bool given masks (padding prompts all False).
            padding: (N, P) bool, True for padding prompts.
        Returns:
            {"pred_logits": (N, P, K+1), "pred_masks": (N, P, H/4, W/4) mask logits,
             "pred_logits_per_layer": the class logits of the initial queries and after every decoder layer}.
        """
        head = self.sem_seg_head
        if head.transformer_in_feature != "multi_scale_pixel_decoder":
            raise ValueError("MaskClassifier needs MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE 'multi_scale_pixel_decoder'")
        decoder = head.predictor
        mask_features, _, multi_scale = head.pixel_decoder.forward_features(self.backbone(images))
        src, pos, sizes = decoder.prepare_memory(multi_scale)
        pooled = pool_in_masks(mask_features, masks)  # (N, P, mask_dim)
        query = (self.prompt_proj(pooled.to(self.prompt_proj.weight.dtype)) + self.prompt_feat.weight).transpose(0, 1)
        query_pos = self.prompt_pos.weight[:, None].expand(query.shape[0], query.shape[1], -1)
        attn_masks = prompt_attention_masks(masks, sizes, decoder.num_heads)
        out = decoder.decode(src, pos, sizes, mask_features, queries=(query, query_pos), attn_masks=attn_masks,
                             query_padding_mask=padding)
        per_layer = [a["pred_logits"] for a in out["aux_outputs"]] + [out["pred_logits"]]
        return {"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"], "pred_logits_per_layer": per_layer}
