"""Reading checkpoint files without running code from them.

A pickle can name any importable function and have it called on load (``os.system``, ``builtins.exec``,
...), so a checkpoint from the internet is a program. Here:

* ``.pkl`` files (detectron2 / Caffe2 model zoo, converted backbones) go through :class:`RestrictedUnpickler`,
  which admits only containers, strings, bytes, numbers and numpy arrays / scalars / dtypes;
* ``.pth`` and other torch files go through ``torch.load(weights_only=True)`` (tensors, containers, numbers).

Anything else is refused with :class:`UnsafeCheckpointError`, naming the file and the object it wanted.
"""
import io
import os
import pickle
from typing import Any, BinaryIO, Union

import torch

__all__ = ["UnsafeCheckpointError", "RestrictedUnpickler", "load_pickle", "load_torch"]

# (module, name) of the only globals a weights pickle needs: numpy's array/scalar reconstruction (numpy 1 and 2
# spell the module differently), OrderedDict (state dicts), and _codecs.encode (bytes written by Python 2
# pickles, as in the Caffe2 model zoo, and by protocol-2 pickles of numpy arrays).
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
    ("numpy._core.numeric", "_frombuffer"),
}
# numpy.dtype pickles name the scalar type, e.g. numpy.dtypes.Float32DType (numpy >= 1.25)
_ALLOWED_MODULES = ("numpy.dtypes",)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that holds objects other than weights (and could run code when loaded)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, strings, numbers and numpy arrays; see the module docstring."""

    def __init__(self, file: BinaryIO, *, source: str = "the pickle", encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module in _ALLOWED_MODULES and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source} wants to create '{module}.{name}', which a weights file does not need (only "
            "containers, strings, numbers and numpy arrays are admitted); it was not loaded, since unpickling "
            "it could run code. If you trust its origin, load it in Python yourself and save the weights alone, "
            "e.g. torch.save(state_dict, 'weights.pth')."
        )

    def persistent_load(self, pid):  # torch's zip-less legacy format and others use persistent ids
        raise UnsafeCheckpointError(f"{self.source} uses persistent ids ({pid!r}); it is not a plain weights pickle")


def load_pickle(file: Union[str, BinaryIO], encoding: str = "latin1") -> Any:
    """Unpickle ``file`` (a path or a binary file object) with :class:`RestrictedUnpickler`.

    ``encoding`` "latin1" reads Python 2 pickles (numpy arrays in them included), as detectron2 does.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return RestrictedUnpickler(f, source=f"'{file}'", encoding=encoding).load()
    if isinstance(file, bytes):
        return RestrictedUnpickler(io.BytesIO(file), encoding=encoding).load()
    return RestrictedUnpickler(file, source=f"'{getattr(file, 'name', 'the pickle')}'", encoding=encoding).load()


def load_torch(path: str, map_location="cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with an error naming the file when it holds other objects."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"'{path}' holds objects other than tensors, containers and numbers, so it was not loaded (unpickling "
            f"it could run code). torch said: {str(e).splitlines()[0]} If you trust its origin, load it with "
            "torch.load(path, weights_only=False) in Python yourself and save the weights alone, e.g. "
            "torch.save({'model': state_dict}, 'weights.pth')."
        ) from e


# What an unpickled training checkpoint may construct: tensors, containers, numbers, configs. No functions
# beyond torch's tensor rebuilders, so a crafted file cannot run code.
_TORCH_CONFIG_ALLOWED = {
    "collections": {"OrderedDict", "defaultdict"},
    "builtins": {"set", "frozenset", "slice", "complex", "bytearray", "range"},
    "__builtin__": {"set", "frozenset", "slice", "complex", "bytearray", "range"},  # pickle protocol 2 name
    "torch": {"Size", "device"},
    "torch.storage": {"UntypedStorage", "TypedStorage", "_load_from_bytes"},
    "numpy": {"dtype", "ndarray"},
    "numpy.core.multiarray": {"scalar", "_reconstruct"},
    "numpy._core.multiarray": {"scalar", "_reconstruct"},
    "yacs.config": {"CfgNode"},
    "argparse": {"Namespace"},
}


class _TorchConfigUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = (
            name in _TORCH_CONFIG_ALLOWED.get(module, ())
            or (module == "torch._utils" and name.startswith("_rebuild"))
            or (module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)))
        )
        if not allowed:
            raise UnsafeCheckpointError(f"refusing to load {module}.{name} from a checkpoint: only tensors, containers, "
                                        "numbers and configs are admitted")
        return super().find_class(module, name)


class _restricted_pickle:
    """A ``pickle_module`` for ``torch.load`` whose unpickler only creates data types."""

    Unpickler = _TorchConfigUnpickler
    load = pickle.load


def load_torch_with_config(path: str, map_location="cpu") -> Any:
    """``torch.load`` of a training checkpoint that also pickles its config (yacs ``CfgNode``, argparse
    ``Namespace``), which ``weights_only=True`` refuses; the unpickler still builds data types only."""
    with open(path, "rb") as f:
        return torch.load(f, map_location=map_location, weights_only=False, pickle_module=_restricted_pickle)
