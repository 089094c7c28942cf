"""The C++/OpenMP CPU kernel of multi-scale deformable attention (csrc/ms_deform_attn_cpu.cpp).

Compiled with ``torch.utils.cpp_extension.load`` on first use (about a minute; ``tools/setup.sh`` does it at
set-up) into torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), then
loaded from there. Needs a C++ compiler (``$CXX`` or ``c++``) and ninja; without them :func:`cpp_unavailable`
says why and the caller falls back to the pure-PyTorch op. Shapes as in :mod:`mask2former.ops.ms_deform_attn`.
"""
import logging
import os
import shutil

import torch

from .custom_op import define_deform_attn_op, level_start_index

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "ms_deform_attn_cpu.cpp")
# Vector flags by what this CPU supports (the name keeps one build per instruction set in a shared cache).
_ARCH_FLAGS = {"AVX512": ["-mavx2", "-mfma", "-mf16c"], "AVX2": ["-mavx2", "-mfma", "-mf16c"]}
_state = {}


def load_extension():
    """The compiled module (forward, backward); raises RuntimeError saying why it cannot be built."""
    if "module" in _state:
        return _state["module"]
    if "error" in _state:
        raise RuntimeError(_state["error"])
    try:
        _state["module"] = _build()
    except Exception as e:  # noqa: BLE001 - any build failure means "use the fallback", with the reason
        _state["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
        raise RuntimeError(_state["error"]) from e
    return _state["module"]


def _build():
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: '{compiler}' is not on PATH (install g++, or set CXX)")
    if shutil.which("ninja") is None:
        try:  # the PyPI package puts its binary beside the interpreter, which need not be on PATH
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            raise RuntimeError("ninja is missing: pip install ninja") from None
    # Importing cpp_extension warns that a CUDA build without a CUDA runtime uses a default CUDA_HOME; this
    # CPU-only extension never needs CUDA, so the warning is noise.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)

    capability = torch.backends.cpu.get_cpu_capability()
    flags = _ARCH_FLAGS.get(capability, [])
    name = "mask2former_ms_deform_attn_cpu_" + ("avx2" if flags else "generic")
    return cpp_extension.load(
        name, sources=[_SOURCE], extra_cflags=["-O3", "-fopenmp", *flags], extra_ldflags=["-fopenmp"],
        verbose=False)


def cpp_unavailable():
    """None when the kernel can be used, else the reason (a sentence)."""
    try:
        load_extension()
    except RuntimeError as e:
        return str(e)
    return None


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _forward(value, spatial_shapes, level_start, locations, weights):
    return load_extension().forward(value, spatial_shapes, level_start, locations, weights)


def _backward(grad_output, value, spatial_shapes, level_start, locations, weights):
    grad_value, grad_locations, grad_weights = load_extension().backward(
        value, spatial_shapes, level_start, locations, weights, grad_output)
    return grad_value.to(value.dtype), grad_locations, grad_weights


ms_deform_attn_cpu_op = define_deform_attn_op("ms_deform_attn_cpu", _forward, _backward)


def ms_deform_attn_cpp(value, spatial_shapes, sampling_locations, attention_weights):
    """The CPU kernel; value float32, float64, bfloat16 or float16 (accumulated in float32, or float64).

    Locations and weights are used in the accumulation dtype (their gradients flow back to their own dtype);
    the output has value's dtype.
    """
    acc = _acc_dtype(value.dtype)
    spatial_shapes = spatial_shapes.to(device="cpu", dtype=torch.long).contiguous()
    return ms_deform_attn_cpu_op(
        value.contiguous(), spatial_shapes, level_start_index(spatial_shapes),
        sampling_locations.to(acc).contiguous(), attention_weights.to(acc).contiguous())
