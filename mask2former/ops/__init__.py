"""Low-level tensor ops used by the modules in :mod:`mask2former.modeling`."""
from .ms_deform_attn import ms_deform_attn, ms_deform_attn_pytorch, resolve_impl

__all__ = ["ms_deform_attn", "ms_deform_attn_pytorch", "resolve_impl"]
