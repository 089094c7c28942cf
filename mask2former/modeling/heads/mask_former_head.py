"""MaskFormerHead: the pixel decoder followed by the transformer decoder ("predictor")."""
from typing import Dict

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..pixel_decoder.build import build_pixel_decoder
from ..transformer_decoder.mask2former_transformer_decoder import build_transformer_decoder


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """forward(features: dict name -> (N, C, H, W)) -> the predictor's output dict (see the decoder).

    With ``aux_sem_seg`` (MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT > 0) a 1x1 convolution also classifies every
    pixel of the mask features in training: "aux_sem_seg" (N, K, H/4, W/4) in the output dict, trained by the
    criterion's per-pixel cross-entropy. It gives the pixel features a dense class signal, which the set loss
    reaches only through the matched queries; inference does not use it.
    """

    _version = 2

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, num_classes: int, pixel_decoder: nn.Module,
                 loss_weight: float = 1.0, ignore_value: int = -1, transformer_predictor: nn.Module,
                 transformer_in_feature: str, aux_sem_seg: bool = False, mask_dim: int = 256):
        super().__init__()
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda kv: kv[1].stride)]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes
        self.aux_sem_seg_predictor = None
        if aux_sem_seg:
            self.aux_sem_seg_predictor = Conv2d(mask_dim, num_classes, kernel_size=1)
            weight_init.c2_msra_fill(self.aux_sem_seg_predictor)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if in_feature in ("transformer_encoder", "multi_scale_pixel_decoder"):
            in_channels = head.CONVS_DIM
        elif in_feature == "pixel_embedding":
            in_channels = head.MASK_DIM
        elif in_feature in input_shape:
            in_channels = input_shape[in_feature].channels
        else:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE '{in_feature}' must be 'multi_scale_pixel_decoder', "
                f"'transformer_encoder', 'pixel_embedding' or a backbone feature {sorted(input_shape)}")
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_in_feature": in_feature,
            "transformer_predictor": build_transformer_decoder(cfg, in_channels, mask_classification=True),
            "aux_sem_seg": cfg.MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT > 0,
            "mask_dim": head.MASK_DIM,
        }

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # MaskFormer (v1) checkpoints kept the pixel decoder's weights directly under the head.
        if local_metadata.get("version", None) is None or local_metadata["version"] < 2:
            for k in [k for k in state_dict if k.startswith(prefix)]:
                rest = k[len(prefix):]
                if not rest.startswith(("predictor.", "pixel_decoder.")):
                    state_dict[prefix + "pixel_decoder." + rest] = state_dict.pop(k)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def forward(self, features, mask=None, targets=None):
        return self.decode(features, *self.pixel_decoder.forward_features(features), mask=mask, targets=targets)

    def decode(self, features, mask_features, encoder_features, multi_scale_features, mask=None, targets=None):
        """The transformer decoder (and, in training, the auxiliary classifier) on the pixel decoder's outputs.

        ``targets`` (training only) reach the decoder when it has denoising queries (MODEL.MASK_FORMER.DN), so
        that decoders without them keep the plain ``(x, mask_features, mask)`` interface.
        """
        extra = {"targets": targets} if getattr(self.predictor, "dn_groups", 0) else {}
        if self.transformer_in_feature == "multi_scale_pixel_decoder":
            outputs = self.predictor(multi_scale_features, mask_features, mask, **extra)
        elif self.transformer_in_feature == "transformer_encoder":
            if encoder_features is None:
                raise ValueError("TRANSFORMER_IN_FEATURE 'transformer_encoder' needs a pixel decoder with an "
                                 "encoder (MSDeformAttnPixelDecoder)")
            outputs = self.predictor(encoder_features, mask_features, mask, **extra)
        elif self.transformer_in_feature == "pixel_embedding":
            outputs = self.predictor(mask_features, mask_features, mask, **extra)
        else:
            outputs = self.predictor(features[self.transformer_in_feature], mask_features, mask, **extra)
        if self.aux_sem_seg_predictor is not None and self.training:
            outputs["aux_sem_seg"] = self.aux_sem_seg_predictor(mask_features)
        return outputs
