"""Register a deformable-attention kernel pair as one ``torch.library`` custom op with autograd.

``torch.compile`` and ``torch.export`` then see a single opaque op (with a fake implementation for shape
propagation) instead of tracing into an extension or a Triton launch.
"""
from typing import Callable, Tuple

import torch
from torch import Tensor


def define_deform_attn_op(name: str, forward: Callable, backward: Callable):
    """Define ``mask2former::{name}`` and ``mask2former::{name}_backward``.

    Args:
        forward: (value, spatial_shapes, level_start, sampling_locations, attention_weights) -> (N, Lq, M*D)
            output of value's dtype; locations and weights already in the kernel's accumulation dtype.
        backward: (grad_output, value, spatial_shapes, level_start, sampling_locations, attention_weights)
            -> (grad_value, grad_sampling_locations, grad_attention_weights), each of its input's dtype.
    Returns:
        the forward op, differentiable in value, sampling_locations and attention_weights (once: the kernels
        have no double backward).
    """

    @torch.library.custom_op(f"mask2former::{name}", mutates_args=())
    def op(value: Tensor, spatial_shapes: Tensor, level_start: Tensor, sampling_locations: Tensor,
           attention_weights: Tensor) -> Tensor:
        return forward(value, spatial_shapes, level_start, sampling_locations, attention_weights)

    @op.register_fake
    def _(value, spatial_shapes, level_start, sampling_locations, attention_weights):
        N, _, M, D = value.shape
        return value.new_empty(N, sampling_locations.shape[1], M * D)

    @torch.library.custom_op(f"mask2former::{name}_backward", mutates_args=())
    def op_backward(grad_output: Tensor, value: Tensor, spatial_shapes: Tensor, level_start: Tensor,
                    sampling_locations: Tensor, attention_weights: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        return backward(grad_output.contiguous(), value, spatial_shapes, level_start, sampling_locations,
                        attention_weights)

    @op_backward.register_fake
    def _(grad_output, value, spatial_shapes, level_start, sampling_locations, attention_weights):
        return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward_rule(ctx, grad_output):
        value, spatial_shapes, level_start, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = op_backward(
            grad_output, value, spatial_shapes, level_start, locations, weights)
        return grad_value, None, None, grad_locations, grad_weights

    op.register_autograd(backward_rule, setup_context=setup_context)
    return op


def level_start_index(spatial_shapes: Tensor) -> Tensor:
    """(L, 2) (H, W) -> (L,) int64: the index of each level's first token in the flattened value."""
    sizes = spatial_shapes.prod(1)
    return (sizes.cumsum(0) - sizes).contiguous()
