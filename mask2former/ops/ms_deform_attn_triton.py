"""The Triton GPU kernel of multi-scale deformable attention, forward and backward.

One program handles a block of queries of one (batch, head): it computes each sampling point's four bilinear
corners, gathers (queries x channels) tiles of ``value`` and accumulates them in float32 registers, so no
samples tensor exists. The backward recomputes the corners, writes the location and weight gradients of its
queries directly and adds the value gradient with float32 atomics (into a float32 buffer for low-precision
values). Values may be float32, bfloat16 or float16; locations and weights are used in float32.
Shapes as in :mod:`mask2former.ops.ms_deform_attn`. With ``TRITON_INTERPRET=1`` the kernels run on CPU
tensors through Triton's interpreter (slowly), which the tests use on machines without a GPU.
"""
import os

import torch

from .custom_op import define_deform_attn_op, level_start_index

_state = {}


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable(device):
    """None when the kernel can run on ``device``, else the reason."""
    if device.type != "cuda" and not (device.type == "cpu" and _interpreting()):
        return f"the Triton kernel runs on CUDA (or on the CPU with TRITON_INTERPRET=1), the input is on {device}"
    try:
        _kernels()
    except ImportError as e:
        return f"triton cannot be imported ({e}); it ships with the CUDA build of torch: pip install triton"
    return None


def _kernels():
    if "kernels" not in _state:
        _state["kernels"] = _define_kernels()
    return _state["kernels"]


def _define_kernels():
    import triton

    from . import ms_deform_attn_triton_kernels as k

    return triton, k._forward_kernel, k._backward_kernel


def _launch_config(value, sampling_locations):
    triton = _kernels()[0]
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    block_d = triton.next_power_of_2(D)
    # About 4k channel values per tile: registers for the accumulator and four corner tiles.
    block_q = max(1, min(64, 4096 // block_d, triton.next_power_of_2(Lq)))
    return (triton.cdiv(Lq, block_q), N * M), block_q, block_d


def _forward(value, spatial_shapes, level_start, locations, weights):
    _, forward_kernel, _ = _kernels()
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    out = value.new_empty(N, Lq, M * D)
    grid, block_q, block_d = _launch_config(value, locations)
    forward_kernel[grid](value, spatial_shapes, level_start, locations, weights, out, S, Lq, M=M, D=D, L=L, P=P,
                         BLOCK_Q=block_q, BLOCK_D=block_d)
    return out


def _backward(grad_output, value, spatial_shapes, level_start, locations, weights):
    _, _, backward_kernel = _kernels()
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
    grad_locations = torch.empty_like(locations)
    grad_weights = torch.empty_like(weights)
    grid, block_q, block_d = _launch_config(value, locations)
    backward_kernel[grid](value, spatial_shapes, level_start, locations, weights, grad_output, grad_value,
                          grad_locations, grad_weights, S, Lq, M=M, D=D, L=L, P=P, BLOCK_Q=block_q,
                          BLOCK_D=block_d)
    return grad_value.to(value.dtype), grad_locations, grad_weights


ms_deform_attn_triton_op = define_deform_attn_op("ms_deform_attn_triton", _forward, _backward)


def ms_deform_attn_triton(value, spatial_shapes, sampling_locations, attention_weights):
    """The Triton kernel; value float32, bfloat16 or float16, output of value's dtype."""
    spatial_shapes = spatial_shapes.to(device=value.device, dtype=torch.long).contiguous()
    return ms_deform_attn_triton_op(
        value.contiguous(), spatial_shapes, level_start_index(spatial_shapes),
        sampling_locations.float().contiguous(), attention_weights.float().contiguous())
