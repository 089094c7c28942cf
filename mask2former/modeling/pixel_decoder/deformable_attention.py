"""Multi-scale deformable attention layer (Zhu et al., "Deformable DETR", ICLR 2021).

Projects queries to sampling offsets and attention weights, values to heads, and reads the values with the
:func:`mask2former.ops.ms_deform_attn` op. Parameter names follow the official implementation.
"""
import math

import torch
from torch import nn

from ...ops.ms_deform_attn import resolve_impl, run_resolved


def sampling_locations(reference_points: torch.Tensor, offsets: torch.Tensor,
                       spatial_shapes: torch.Tensor) -> torch.Tensor:
    """``reference_points + offsets / (W_l, H_l)``: the offsets are in pixels of each level.

    Args:
        reference_points: (N, Lq, L, 2), (x, y) in [0, 1].
        offsets: (N, Lq, M, L, P, 2).
        spatial_shapes: (L, 2) int64, (H_l, W_l).
    Returns:
        (N, Lq, M, L, P, 2). Computed over (N * Lq, M, L * P * 2) with the two small operands expanded to
        that last axis: the same divisions and additions as the 6-D broadcast, bit for bit, 7x faster on a
        CPU (the broadcast over two-element rows does not vectorise).
    """
    N, Lq, M, L, P, _ = offsets.shape
    normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
    normalizer = normalizer[:, None, :].expand(L, P, 2).reshape(L * P * 2)
    reference = reference_points[:, :, :, None, :].expand(N, Lq, L, P, 2).reshape(N * Lq, 1, L * P * 2)
    return (reference + offsets.reshape(N * Lq, M, L * P * 2) / normalizer).view(N, Lq, M, L, P, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module.

    Args:
        d_model: channels of queries and values.
        n_levels: number of feature levels.
        n_heads: attention heads; d_model must be divisible by it.
        n_points: sampling points per head and level.
        impl: the op's implementation, "auto", "pytorch", "cpp" or "triton" (:func:`ms_deform_attn`).
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, impl="auto"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.impl = impl

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

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_padding_mask=None,
                level_shapes=None):
        """
        Args:
            query: (N, Lq, C)
            reference_points: (N, Lq, L, 2) in [0, 1], (x, y), one per level.
            input_flatten: (N, S, C), all levels flattened and concatenated.
            input_spatial_shapes: (L, 2) int64, (H_l, W_l).
            input_padding_mask: (N, S) bool, True at padding (its values are zeroed), or None.
            level_shapes: optional sequence of the (H_l, W_l) of ``input_spatial_shapes`` (see ms_deform_attn).
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
        locations = sampling_locations(reference_points, offsets, input_spatial_shapes)
        # Sampling positions need fp32 precision: under autocast, locations and weights stay fp32. The kernels
        # read low-precision values and accumulate in fp32; the pure-PyTorch op runs wholly in fp32.
        impl = resolve_impl(self.impl, value)
        if impl == "pytorch":
            value = value.float()
        with torch.autocast(device_type=value.device.type, enabled=False):
            output = run_resolved(impl, value, input_spatial_shapes, locations.float(), weights.float(),
                                  level_shapes)
        return self.output_proj(output.to(query.dtype))
