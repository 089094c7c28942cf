"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021): the op and its implementations.

Each query attends to a few sampling points around a reference point on every feature level. The samples are
read with bilinear interpolation, weighted by softmax-normalised attention weights and summed.

:func:`ms_deform_attn` picks an implementation (``impl``, from MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL):
    "pytorch"  :func:`ms_deform_attn_pytorch` below (``grid_sample``), any device: the fallback and reference
    "cpp"      the C++/OpenMP CPU kernel (ms_deform_attn_cpp.py), compiled on first use
    "triton"   the Triton GPU kernel (ms_deform_attn_triton.py)
    "auto"     the environment variable MASK2FORMER_DEFORM_ATTN_IMPL if set, else "cpp" on the CPU and
               "triton" on CUDA when they work for the input's dtype, else "pytorch"
The log says once per implementation which one runs and why. Importing this module never compiles anything.

Shapes (N batch, S total tokens over all levels, Lq queries, M heads, D channels per head, L levels,
P points per level):
    value               (N, S, M, D)
    spatial_shapes      (L, 2) int64, (H_l, W_l) per level; sum(H_l * W_l) == S
    sampling_locations  (N, Lq, M, L, P, 2), (x, y) normalised to [0, 1] over each level
    attention_weights   (N, Lq, M, L, P), summing to 1 over (L, P)
    output              (N, Lq, M * D)
"""
import logging
import os

import torch
import torch.nn.functional as F

IMPLS = ("auto", "pytorch", "cpp", "triton")
ENV_VAR = "MASK2FORMER_DEFORM_ATTN_IMPL"
CPP_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

logger = logging.getLogger(__name__)
_logged = set()


def _log_once(impl, reason):
    # Once per implementation, whatever the reason: a model's layers all resolve the same choice.
    if impl not in _logged:
        _logged.add(impl)
        logger.info(f"multi-scale deformable attention: using the {impl} implementation ({reason})")


def _unavailable(impl, value):
    """None if ``impl`` can run on ``value``'s device and dtype, else why not."""
    if impl == "cpp":
        if value.device.type != "cpu":
            return f"the C++ kernel runs on the CPU, the input is on {value.device}"
        if value.dtype not in CPP_DTYPES:
            return f"the C++ kernel does not take {value.dtype}"
        from .ms_deform_attn_cpp import cpp_unavailable

        return cpp_unavailable()
    if impl == "triton":
        if value.dtype not in TRITON_DTYPES:
            return f"the Triton kernel does not take {value.dtype}"
        from .ms_deform_attn_triton import triton_unavailable

        return triton_unavailable(value.device)
    return None


def resolve_impl(impl, value):
    """The implementation that runs for ``impl`` (one of IMPLS) on ``value``; logs the choice once.

    An explicit "cpp" or "triton" that cannot run raises; "auto" falls back to "pytorch" and says why.
    """
    if impl not in IMPLS:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL: expected one of {IMPLS}, got {impl!r}")
    source = "MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL"
    if impl == "auto" and os.environ.get(ENV_VAR):
        impl, source = os.environ[ENV_VAR], ENV_VAR
        if impl not in IMPLS:
            raise ValueError(f"{ENV_VAR}: expected one of {IMPLS}, got {impl!r}")
    if impl == "pytorch":
        _log_once("pytorch", f"{source}=pytorch")
        return "pytorch"
    if impl != "auto":
        reason = _unavailable(impl, value)
        if reason:
            raise RuntimeError(f"{source}={impl} cannot run: {reason}")
        _log_once(impl, f"{source}={impl}")
        return impl
    candidate = "triton" if value.device.type == "cuda" else "cpp" if value.device.type == "cpu" else None
    if candidate is None:
        _log_once("pytorch", f"no kernel for {value.device.type} tensors")
        return "pytorch"
    reason = _unavailable(candidate, value)
    if reason:
        _log_once("pytorch", f"auto: the {candidate} kernel is unavailable: {reason}")
        return "pytorch"
    _log_once(candidate, f"auto, {value.device.type} {str(value.dtype).replace('torch.', '')} input")
    return candidate


def ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights, impl="auto",
                   level_shapes=None):
    """Multi-scale deformable attention with the implementation ``impl`` chooses (see the module docstring).

    Every implementation accumulates in float32 (float64 for float64 input) and returns value's dtype.
    ``level_shapes``: see :func:`ms_deform_attn_pytorch` (the kernels read the sizes from ``spatial_shapes``).
    """
    return run_resolved(resolve_impl(impl, value), value, spatial_shapes, sampling_locations, attention_weights,
                        level_shapes)


def run_resolved(impl, value, spatial_shapes, sampling_locations, attention_weights, level_shapes=None):
    """Run the implementation that :func:`resolve_impl` chose ("pytorch", "cpp" or "triton"), without checking
    again (callers that resolve once per forward, like the attention layer)."""
    if impl == "cpp":
        from .ms_deform_attn_cpp import ms_deform_attn_cpp

        return ms_deform_attn_cpp(value, spatial_shapes, sampling_locations, attention_weights)
    if impl == "triton":
        from .ms_deform_attn_triton import ms_deform_attn_triton

        return ms_deform_attn_triton(value, spatial_shapes, sampling_locations, attention_weights)
    return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights, level_shapes)


def ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights, level_shapes=None):
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
    # its output (N*M, D, P, Lq) is then weighted and summed over points in rows of queries, which is faster on a
    # CPU than a (..., Lq, P) layout reduced by an einsum (docs/PERFORMANCE.md, "Deformable attention"). Grids and
    # weights are made contiguous so that the gradients reaching grid_sample are contiguous too (else it copies them).
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
