"""Masked-attention transformer decoder for video clips (Mask2Former for VIS, Cheng et al. 2021).

The image decoder with a time axis: every query is one instance of the whole clip. Its memory is the
features of all frames of the clip at one level (keys ordered frame by frame), with a 3D (x, y, t) sine
positional encoding; its mask is a (T, H, W) spatio-temporal mask, the dot product of the query's mask
embedding with every frame's per-pixel embeddings; masked attention restricts each query to the pixels
of its previous mask in all frames. The layers, heads and parameters are the image decoder's (same names),
so image checkpoints initialise it.
"""
from detectron2.config import configurable
import torch

from .mask2former_transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    MultiScaleMaskedTransformerDecoder,
    attention_mask_from_masks,
)
from .position_encoding import PositionEmbeddingSine3D

__all__ = ["VideoMultiScaleMaskedTransformerDecoder"]


@TRANSFORMER_DECODER_REGISTRY.register()
class VideoMultiScaleMaskedTransformerDecoder(MultiScaleMaskedTransformerDecoder):
    """Mask2Former's decoder over video clips.

    forward(x, mask_features, mask=None):
        x: 3 tensors (B * T, C_in, H_l, W_l), coarsest first, the frames of each clip consecutive.
        mask_features: (B * T, mask_dim, H/4, W/4) per-pixel embeddings of every frame.
    returns {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, T, H/4, W/4),
             "aux_outputs": [{"pred_logits", "pred_masks"}, ...] for the earlier predictions}.

    In training B * T frames hold B clips of ``num_frames`` (INPUT.SAMPLING_FRAME_NUM) frames each; in
    inference they are one clip of any length (one video, or one window of a long video).
    """

    @configurable
    def __init__(self, in_channels, mask_classification=True, *, num_frames: int, **kwargs):
        super().__init__(in_channels, mask_classification, **kwargs)
        if num_frames < 1:
            raise ValueError(f"INPUT.SAMPLING_FRAME_NUM must be >= 1, got {num_frames}")
        self.num_frames = num_frames
        hidden_dim = self.query_feat.weight.shape[1]
        self.pe_layer = PositionEmbeddingSine3D(hidden_dim // 2, normalize=True)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        for key, on in (("QUERY_SELECTION", mf.QUERY_SELECTION), ("DN.NUM_GROUPS", mf.DN.NUM_GROUPS),
                        ("ONE_TO_MANY.NUM_QUERIES", mf.ONE_TO_MANY.NUM_QUERIES)):
            if on:
                raise ValueError(f"MODEL.MASK_FORMER.{key} is a training switch of the image decoder; the video "
                                 "decoder does not implement it (turn it off for VideoMaskFormer)")
        ret = super().from_config(cfg, in_channels, mask_classification)
        ret["num_frames"] = cfg.INPUT.SAMPLING_FRAME_NUM
        return ret

    def clip_shape(self, num_images: int):
        """(clips B, frames T) of a batch of ``num_images`` frames (see the class docstring)."""
        if not self.training:
            return 1, num_images
        if num_images % self.num_frames != 0:
            raise ValueError(
                f"the video decoder got {num_images} frames in training, not a multiple of "
                f"INPUT.SAMPLING_FRAME_NUM = {self.num_frames} (frames per clip)")
        return num_images // self.num_frames, self.num_frames

    def forward(self, x, mask_features, mask=None, targets=None):
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        bs, t = self.clip_shape(mask_features.shape[0])
        mask_features = mask_features.view(bs, t, *mask_features.shape[1:])  # (B, T, C, H, W)
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            h, w = x[i].shape[-2:]
            sizes.append((h, w))
            pe = self.pe_layer(x[i].view(bs, t, -1, h, w))  # (B, T, C, h, w)
            feat = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]  # (BT, C, hw)
            c = feat.shape[1]
            # (B, T, C, hw) -> (T * hw, B, C): keys frame by frame, as attention_mask_from_masks orders them
            pos.append(pe.flatten(3).permute(1, 3, 0, 2).flatten(0, 1))
            src.append(feat.view(bs, t, c, h * w).permute(1, 3, 0, 2).flatten(0, 1))
        return self.decode(src, pos, sizes, mask_features)

    def forward_prediction_heads(self, output, mask_features, attn_mask_target_size):
        """(Q, B, C) queries, (B, T, C, H, W) mask features -> class logits (B, Q, K+1), mask logits
        (B, Q, T, H, W) and the next layer's attention mask (B * heads, Q, T * h * w)."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,btchw->bqthw", mask_embed, mask_features)
        attn_mask = attention_mask_from_masks(outputs_mask, attn_mask_target_size, self.num_heads)
        return outputs_class, outputs_mask, attn_mask
