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
import torch.nn.functional as F


def ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights, level_shapes=None):
    """Sample every level at the given locations and sum the samples with the attention weights.

    ``level_shapes``: the (H_l, W_l) of ``spatial_shapes`` as a sequence, if the caller has it (taken from the
    feature maps' shapes, they stay symbolic when the model is exported with dynamic sizes; reading them back
    from the tensor would fix them to the example's size).

    Sampling follows the convention of the original CUDA kernel: pixel centres at (i + 0.5) / size, zeros
    outside the feature map (``grid_sample`` with ``align_corners=False`` and zero padding). Levels are
    accumulated one at a time, so the extra memory is one level's samples rather than all of them.
    """
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if level_shapes is None:
        level_shapes = spatial_shapes.tolist()
    sizes = [h * w for h, w in level_shapes]
    # grid_sample works on (N*M, D, H, W) maps with (N*M, P, Lq, 2) grids in [-1, 1]. Points before queries:
    # its output (N*M, D, P, Lq) is then weighted and summed over points in rows of queries: forward 1.3-2.2x and
    # forward + backward 1.06-1.4x faster on a CPU than a (..., Lq, P) layout reduced by an einsum
    # (tools/benchmark_ms_deform_attn.py, docs/PERFORMANCE.md). Grids and weights are made
    # contiguous so that the gradients reaching grid_sample are contiguous too (else it copies them, slowly).
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 4, 1, 5).reshape(N * M, L, P, Lq, 2).contiguous()
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(N * M, L, P, Lq).contiguous()
    output = value.new_zeros(N * M, D, Lq)
    for lvl, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), level_shapes)):
        value_l = value_l.permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        samples = F.grid_sample(
            value_l, grids[:, lvl], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (N*M, D, P, Lq)
        output = output + (samples * weights[:, lvl, None]).sum(2)
    return output.view(N, M * D, Lq).transpose(1, 2).contiguous()
