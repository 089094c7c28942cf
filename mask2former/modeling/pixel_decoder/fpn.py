"""Plain FPN pixel decoder (``BasePixelDecoder``): the cheaper alternative to the deformable encoder."""
from typing import Dict

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn


@SEM_SEG_HEADS_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """Top-down FPN over all input features.

    forward_features(features) returns mask_features (N, mask_dim, H/4, W/4), None (no encoder), and the
    first 3 FPN outputs from coarse to fine (N, conv_dim, ., .).
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, conv_dim: int, mask_dim: int, norm: str = ""):
        super().__init__()
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        channels = [v.channels for _, v in ordered]
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(channels):
            if idx == len(channels) - 1:  # the coarsest level has no lateral connection
                lateral_conv = None
                output_conv = Conv2d(in_channels, conv_dim, kernel_size=3, stride=1, padding=1, bias=use_bias,
                                     norm=get_norm(norm, conv_dim), activation=F.relu)
            else:
                lateral_conv = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias,
                                      norm=get_norm(norm, conv_dim))
                output_conv = Conv2d(conv_dim, conv_dim, kernel_size=3, stride=1, padding=1, bias=use_bias,
                                     norm=get_norm(norm, conv_dim), activation=F.relu)
                weight_init.c2_xavier_fill(lateral_conv)
                self.add_module(f"adapter_{idx + 1}", lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        self.lateral_convs = lateral_convs[::-1]  # coarse to fine
        self.output_convs = output_convs[::-1]
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, stride=1, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
        }

    def forward_features(self, features):
        multi_scale_features = []
        y = None
        for name, lateral_conv, output_conv in zip(self.in_features[::-1], self.lateral_convs, self.output_convs):
            x = features[name]
            if lateral_conv is None:
                y = output_conv(x)
            else:
                cur_fpn = lateral_conv(x)
                y = output_conv(cur_fpn + F.interpolate(y, size=cur_fpn.shape[-2:], mode="nearest"))
            if len(multi_scale_features) < self.maskformer_num_feature_levels:
                multi_scale_features.append(y)
        return self.mask_features(y), None, multi_scale_features

    def forward(self, features):
        return self.forward_features(features)
