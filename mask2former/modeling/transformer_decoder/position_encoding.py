"""Sine positional encodings ("Attention Is All You Need", as used by DETR and Mask2Former)."""
import math

import torch
from torch import nn


def _sine(embed, num_pos_feats, temperature):
    """(..., ) positions -> (..., num_pos_feats) interleaved sin/cos features."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=embed.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = embed[..., None] / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """2D sine encoding of (y, x) pixel positions.

    forward(x (N, C, H, W), mask (N, H, W) bool or None, True at padding) -> (N, 2 * num_pos_feats, H, W),
    the y features first, then the x features. With ``normalize``, positions are scaled to (0, scale].
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x, mask=None):
        if mask is None:
            mask = torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        pos_y = _sine(y_embed, self.num_pos_feats, self.temperature)
        pos_x = _sine(x_embed, self.num_pos_feats, self.temperature)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def __repr__(self):
        return (f"{self.__class__.__name__}(num_pos_feats={self.num_pos_feats}, "
                f"temperature={self.temperature}, normalize={self.normalize}, scale={self.scale})")


class PositionEmbeddingSine3D(nn.Module):
    """3D sine encoding of (t, y, x) positions for video clips.

    forward(x (N, T, C, H, W), mask (N, T, H, W) bool or None) -> (N, T, 2 * num_pos_feats, H, W):
    the 2D (y, x) encoding plus a time encoding of the same width (2 * num_pos_feats channels).
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x, mask=None):
        N, T, _, H, W = x.shape
        if mask is None:
            mask = torch.zeros((N, T, H, W), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        z_embed = not_mask.cumsum(1, dtype=torch.float32)
        y_embed = not_mask.cumsum(2, dtype=torch.float32)
        x_embed = not_mask.cumsum(3, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            z_embed = z_embed / (z_embed[:, -1:, :, :] + eps) * self.scale
            y_embed = y_embed / (y_embed[:, :, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, :, -1:] + eps) * self.scale
        pos_x = _sine(x_embed, self.num_pos_feats, self.temperature)
        pos_y = _sine(y_embed, self.num_pos_feats, self.temperature)
        pos_z = _sine(z_embed, self.num_pos_feats * 2, self.temperature)
        pos = torch.cat((pos_y, pos_x), dim=4) + pos_z  # (N, T, H, W, 2 * num_pos_feats)
        return pos.permute(0, 1, 4, 2, 3)
