"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021) in pure PyTorch.

Each query attends to a few sampling points around a reference point on every feature level. The samples are
read with bilinear interpolation (``grid_sample``), weighted by softmax-normalised attention weights and summed.
No compiled extension is needed: the op runs on CPU and GPU and never fails at import.

Shapes (N batch, S total tokens over all levels, Lq queries, M heads, D channels per head, L levels,
P points per level):
    value               (N, S, M, D)
    spatial_shapes      (L, 2) int64, (H_l, W_l) per level; sum(H_l * W_l) == S
    sampling_locations  (N, Lq, M, L, P, 2), (x, y) normalised to [0, 1] over each level
    attention_weights   (N, Lq, M, L, P), summing to 1 over (L, P)
    output              (N, Lq, M * D)
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """Sample every level at the given locations and sum the samples with the attention weights.

    Sampling follows the convention of the original CUDA kernel: pixel centres at (i + 0.5) / size, zeros
    outside the feature map (``grid_sample`` with ``align_corners=False`` and zero padding). Levels are
    accumulated one at a time, so the extra memory is one level's samples rather than all of them.
    """
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    # grid_sample works on (N*M, D, H, W) maps with (N*M, P, Lq, 2) grids in [-1, 1]. Points before queries:
    # its output (N*M, D, P, Lq) is then weighted and summed over points in rows of queries: forward 1.3-2.2x and
    # forward + backward 1.06-1.4x faster on a CPU than a (..., Lq, P) layout reduced by an einsum
    # (tools/benchmark_ms_deform_attn.py, docs/PERFORMANCE.md). Grids and weights are made
    # contiguous so that the gradients reaching grid_sample are contiguous too (else it copies them, slowly).
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 4, 1, 5).reshape(N * M, L, P, Lq, 2).contiguous()
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(N * M, L, P, Lq).contiguous()
    output = value.new_zeros(N * M, D, Lq)
    for lvl, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes.tolist())):
        value_l = value_l.permute(0, 2, 3, 1).reshape(N * M, D, int(h), int(w))
        samples = F.grid_sample(
            value_l, grids[:, lvl], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (N*M, D, P, Lq)
        output = output + (samples * weights[:, lvl, None]).sum(2)
    return output.view(N, M * D, Lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module.

    Args:
        d_model: channels of queries and values.
        n_levels: number of feature levels.
        n_heads: attention heads; d_model must be divisible by it.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        # Offsets start on rings around the reference point: head h points along angle 2*pi*h/M,
        # point p at distance p+1 (in pixels of each level).
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_padding_mask=None):
        """
        Args:
            query: (N, Lq, C)
            reference_points: (N, Lq, L, 2) in [0, 1], (x, y), one per level.
            input_flatten: (N, S, C), all levels flattened and concatenated.
            input_spatial_shapes: (L, 2) int64, (H_l, W_l).
            input_padding_mask: (N, S) bool, True at padding (its values are zeroed), or None.
        Returns:
            (N, Lq, C)
        """
        N, Lq, _ = query.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, -1, M, self.d_model // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)
        # Offsets are in pixels of each level: divide by (W_l, H_l).
        normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        # Sampling positions need fp32 precision: under autocast, run the op in fp32.
        with torch.autocast(device_type=value.device.type, enabled=False):
            output = ms_deform_attn(
                value.float(), input_spatial_shapes, locations.float(), weights.float()
            )
        return self.output_proj(output.to(query.dtype))
