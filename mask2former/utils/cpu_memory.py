"""Keep freed CPU memory in the process for the next tensors, instead of handing it back to the system.

PyTorch allocates CPU tensors with ``malloc``. glibc serves every allocation above its mmap threshold (at most
32 MiB) with a new ``mmap`` and unmaps it on ``free``, so a large activation (an encoder feed-forward output at
800x1216 is 80 MB) is page-faulted in again, 4 KiB at a time, on every forward. :func:`keep_freed_cpu_memory`
turns that off for the process (``mallopt``: no mmap for large blocks, the heap trimmed only above 2 GiB): freed
blocks stay in the heap and serve the next allocations. Results are bit-identical. The process keeps the memory
it has used until it exits, and its peak grows a little (7 % for the official R50 model over images of mixed
sizes); measured in docs/PERFORMANCE.md, "CPU memory allocation".

``train_net.py``, the demo and the benchmark tools call it; in your own process call it once before inference.
``MASK2FORMER_CPU_ALLOC=system`` leaves glibc's defaults. Elsewhere than glibc (macOS, musl, Windows) it does
nothing.
"""
import ctypes
import logging
import os

__all__ = ["keep_freed_cpu_memory", "ENV_VAR"]

ENV_VAR = "MASK2FORMER_CPU_ALLOC"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_TRIM_ABOVE = 2**31 - 1  # mallopt takes an int: trim only when more than 2 GiB are free at the heap's top

_applied = None


def _glibc():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_cpu_memory() -> str:
    """Apply the setting once per process; returns "keep", "system" (left alone, by ``MASK2FORMER_CPU_ALLOC``)
    or "unavailable" (not glibc). Logs what it did the first time."""
    global _applied
    if _applied is not None:
        return _applied
    logger = logging.getLogger(__name__)
    mode = os.environ.get(ENV_VAR, "keep").strip().lower()
    if mode not in ("keep", "system"):
        raise ValueError(f"{ENV_VAR} must be 'keep' (the default) or 'system', got {os.environ[ENV_VAR]!r}")
    if mode == "system":
        logger.info(f"CPU memory: glibc's default allocation ({ENV_VAR}=system)")
        _applied = "system"
        return _applied
    libc = _glibc()
    if libc is None:
        _applied = "unavailable"
        return _applied
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE) == 1
    _applied = "keep" if ok else "unavailable"
    if ok:
        logger.info(f"CPU memory: freed blocks are kept for reuse (no page faults on every large tensor; "
                    f"{ENV_VAR}=system to turn off)")
    else:
        logger.warning("CPU memory: glibc's mallopt refused the settings; large tensors are page-faulted in anew")
    return _applied
