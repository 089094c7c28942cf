"""Multi-scale deformable-attention pixel decoder (Mask2Former, Sec. 4.1).

A deformable-attention transformer encoder refines the 1/32, 1/16 and 1/8 backbone features jointly; an FPN
step then upsamples to the 1/4 feature, from which a 1x1 convolution makes the per-pixel mask embeddings.
"""
import math
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from .deformable_attention import MSDeformAttn


class MSDeformAttnEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward block (post-norm)."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4,
                 deform_attn_impl="auto"):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=deform_attn_impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask=None, level_shapes=None):
        """src, pos: (N, S, C); reference_points: (N, S, L, 2) -> (N, S, C)."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask, level_shapes)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Stack of deformable encoder layers over flattened multi-level features with level embeddings."""

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, dim_feedforward=1024, dropout=0.1,
                 num_feature_levels=4, enc_n_points=4, deform_attn_impl="auto"):
        super().__init__()
        self.d_model = d_model
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points,
                                     deform_attn_impl)
            for _ in range(num_encoder_layers)
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(spatial_shapes, valid_ratios, device, level_shapes=None):
        """Pixel centres of every level, normalised by the valid (unpadded) size: (N, S, L, 2) as (x, y).
        ``level_shapes``: the (H_l, W_l) of ``spatial_shapes`` as a sequence, if known (see ms_deform_attn)."""
        points = []
        for lvl, (h, w) in enumerate(spatial_shapes.tolist() if level_shapes is None else level_shapes):
            ref_y, ref_x = torch.meshgrid(  # 0.5, 1.5, ..., size - 0.5
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            points.append(torch.stack((ref_x, ref_y), -1))
        points = torch.cat(points, 1)
        return points[:, :, None] * valid_ratios[:, None]

    def forward(self, srcs, pos_embeds):
        """
        Args:
            srcs, pos_embeds: lists of L tensors (N, C, H_l, W_l).
        Returns:
            memory (N, S, C), spatial_shapes (L, 2) int64, level_start_index (L,) int64.
        """
        src_flat, pos_flat, shapes = [], [], []
        for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            shapes.append(src.shape[-2:])
            src_flat.append(src.flatten(2).transpose(1, 2))
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flat = torch.cat(src_flat, 1)
        pos_flat = torch.cat(pos_flat, 1)
        # from the shapes as they are (not through Python ints), so that an exported graph keeps them symbolic
        spatial_shapes = torch.stack([torch.stack([torch.as_tensor(s, dtype=torch.long, device=src_flat.device)
                                                   for s in shape]) for shape in shapes])
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        # Inputs are never padded inside a level (padding is real image content after normalisation),
        # so every level is fully valid.
        valid_ratios = src_flat.new_ones(src_flat.shape[0], len(srcs), 2)
        reference_points = self.reference_points(spatial_shapes, valid_ratios, src_flat.device, shapes)
        memory = src_flat
        for layer in self.encoder.layers:
            memory = layer(memory, pos_flat, reference_points, spatial_shapes, level_shapes=shapes)
        return memory, spatial_shapes, level_start_index


def _channels_last_view(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, C, h * w) tokens, transposed from (N, h * w, C), -> an (N, C, h, w) view of the same memory.

    The data already is channels-last. With N = 1 a plain reshape keeps the batch stride of the whole memory,
    which is not the canonical channels-last one, and bilinear upsampling then takes its generic path (10x
    slower at 1/8 of 512x640); the canonical stride names the same elements. (With N > 1 the batch stride is
    that of the memory and stays.) Traced, exported and compiled graphs keep the reshape.
    """
    n, c, _ = tokens.shape
    exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
    if exporting or n != 1 or tokens.stride(1) != 1 or tokens.stride(2) != c:
        return tokens.reshape(n, c, h, w)
    return tokens.as_strided((n, c, h, w), (h * w * c, 1, w * c, c))


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder on the coarse levels + FPN down to the common stride.

    forward_features(features: dict name -> (N, C_i, H_i, W_i)) returns
        mask_features (N, mask_dim, H/4, W/4),
        transformer_encoder_features (N, conv_dim, H/32, W/32): the coarsest encoded level,
        multi_scale_features: 3 tensors (N, conv_dim, ., .), coarsest first (1/32, 1/16, 1/8).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: str,
        transformer_in_features: List[str],
        common_stride: int,
        num_points: int = 4,
        deform_attn_impl: str = "auto",
    ):
        super().__init__()
        for name in transformer_in_features:
            if name not in input_shape:
                raise ValueError(
                    f"MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES contains '{name}', which is "
                    f"not among MODEL.SEM_SEG_HEAD.IN_FEATURES {sorted(input_shape)}"
                )
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]  # fine to coarse, e.g. res2 .. res5
        self.feature_strides = [v.stride for _, v in ordered]
        self.feature_channels = [v.channels for _, v in ordered]
        tr = [(k, v) for k, v in ordered if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in tr]  # fine to coarse
        self.transformer_feature_strides = [v.stride for _, v in tr]
        self.transformer_num_feature_levels = len(tr)

        # input_proj[i] projects the i-th level counted from the coarsest.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, v in reversed(tr)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            dropout=transformer_dropout,
            nhead=transformer_nheads,
            dim_feedforward=transformer_dim_feedforward,
            num_encoder_layers=transformer_enc_layers,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=num_points,
            deform_attn_impl=deform_attn_impl,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        weight_init.c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = 3  # levels used by the transformer decoder
        self.common_stride = common_stride
        # FPN levels between the finest encoded level and the common stride (1 for 1/8 -> 1/4).
        stride = min(self.transformer_feature_strides)
        self.num_fpn_levels = int(math.log2(stride) - math.log2(self.common_stride))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral_conv = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output_conv = Conv2d(conv_dim, conv_dim, kernel_size=3, stride=1, padding=1, bias=use_bias,
                                 norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Applied from coarse to fine.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": 1024,  # fixed for the deformable encoder, as in the official model
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
            "num_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "deform_attn_impl": head.DEFORM_ATTN_IMPL,
        }

    def forward_features(self, features):
        srcs, pos = [], []
        for idx, name in enumerate(self.transformer_in_features[::-1]):  # coarse to fine
            x = features[name].float()  # deformable attention runs in fp32
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, _, _ = self.transformer(srcs, pos)
        shapes = [s.shape[-2:] for s in srcs]
        n = memory.shape[0]
        out = [
            _channels_last_view(z.transpose(1, 2), h, w)
            for z, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            x = features[name].float()
            cur_fpn = self.lateral_convs[idx](x)
            y = cur_fpn + F.interpolate(out[-1], size=cur_fpn.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](y))
        multi_scale_features = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]), out[0], multi_scale_features

    def forward(self, features):
        return self.forward_features(features)
