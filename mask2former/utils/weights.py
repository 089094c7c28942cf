"""Where ``MODEL.WEIGHTS`` comes from, checked before a long run starts, and loaded without running code.

``MODEL.WEIGHTS`` is whatever detectron2 reads: "" (from scratch), a local path, ``file://PATH``,
``detectron2://NAME`` (detectron2's model zoo, https://dl.fbaipublicfiles.com/detectron2/NAME) or an
``http(s)://`` URL. URLs are downloaded once, with a progress bar, into detectron2's cache (``$FVCORE_CACHE``,
default ``~/.torch/iopath_cache``) by iopath's ``PathManager``, then read from there.

* :func:`resolve_weights` turns a value into a local file (downloading it if it is a URL); a failed download
  raises :class:`WeightsUnavailableError` naming the URL, the cause and how to pass a local file instead.
* :func:`check_weights_available` does that for ``cfg.MODEL.WEIGHTS`` before the model is built, so that a
  missing file or a failed download stops the run at once rather than after building the data loaders.
* :class:`WeightsCheckpointer` is detectron2's ``DetectionCheckpointer`` that reads files through
  :mod:`mask2former.utils.safe_load` (no code from a pickle runs) and reports unreachable URLs the same way.
"""
import os
import re
from typing import Optional

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .safe_load import load_pickle, load_torch

__all__ = ["WeightsUnavailableError", "is_url", "resolve_weights", "check_weights_available", "WeightsCheckpointer"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

_HOW = ("Either pass a local copy of the weights, e.g. `MODEL.WEIGHTS /path/to/file.pkl` (a detectron2 .pkl/.pth "
        "checkpoint, or a converted ImageNet backbone), or train from scratch with `MODEL.WEIGHTS \"\"` (append "
        "either to the command line or set it in the config).")


class WeightsUnavailableError(FileNotFoundError):
    """``MODEL.WEIGHTS`` names a file that does not exist or a URL that could not be downloaded."""


def _error(value: str, problem: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(f"MODEL.WEIGHTS = {value!r}: {problem}. {_HOW}")


def is_url(value: str) -> bool:
    """True for ``scheme://...`` values other than ``file://`` (which names a local path)."""
    return bool(_URL.match(value)) and not value.startswith("file://")


def _download(url: str) -> str:
    """The cached local copy of ``url``, downloaded first if needed (through detectron2's PathManager)."""
    try:
        path = PathManager.get_local_path(url)
    except Exception as e:  # urllib's URLError/HTTPError, OSError, or "no handler" for an unknown scheme
        code = getattr(e, "code", None)  # HTTPError
        cause = f"HTTP {code} {e.reason}" if code is not None else getattr(e, "reason", None) or e
        hint = "" if url.startswith(("http://", "https://", "detectron2://")) else \
            " (the URL schemes detectron2 reads are http://, https://, detectron2:// and file://)"
        raise _error(url, f"could not download it ({type(e).__name__}: {cause}){hint}. On a machine without "
                          f"internet access, download it elsewhere and copy the file here") from e
    if not os.path.isfile(path):
        raise _error(url, f"the download did not produce a file (expected {path})")
    return path


def resolve_weights(value: str, download: bool = True) -> str:
    """The local file that a ``MODEL.WEIGHTS`` value names ("" for none).

    Args:
        value: "", a path (``~`` expanded), ``file://PATH``, or a URL (``http(s)://``, ``detectron2://``).
        download: download a URL into the cache (once; later calls reuse the file). If False, a URL is
            returned unchanged, for callers that only check local paths.

    Raises:
        WeightsUnavailableError: a local path that is not an existing file, or a URL that could not be
            downloaded; the message names the value, the cause and how to pass local weights.
    """
    if not isinstance(value, str):
        raise TypeError(f"MODEL.WEIGHTS must be a string (a path, a URL or \"\"), got {type(value).__name__}: {value!r}")
    if value == "":
        return ""
    if is_url(value):
        return _download(value) if download else value
    path = value[len("file://"):] if value.startswith("file://") else value
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise _error(value, f"{path} is a directory, not a weights file")
    if not os.path.isfile(path):
        raise _error(value, f"no such file: {path}")
    return path


def check_weights_available(cfg, download: bool = True) -> str:
    """:func:`resolve_weights` of ``cfg.MODEL.WEIGHTS``: "" when training from scratch, otherwise a local file
    (a URL is downloaded into the cache now, unless ``download`` is False, when it is returned unchecked)."""
    return resolve_weights(cfg.MODEL.WEIGHTS, download=download)


class WeightsCheckpointer(DetectionCheckpointer):
    """
    detectron2's ``DetectionCheckpointer`` (model-zoo .pkl files, Caffe2 name matching, checkpoints on the
    main worker only), reading files without running code: ``.pkl`` through a restricted unpickler (containers,
    strings, numbers, numpy arrays), everything else through ``torch.load(weights_only=True)``. A URL that
    cannot be downloaded raises :class:`WeightsUnavailableError`.
    """

    def load(self, path: Optional[str], *args, **kwargs):
        if path and is_url(path):
            path = _download(path)
        elif path and path.startswith("file://"):
            path = path[len("file://"):]
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        if filename.endswith(".pkl"):
            data = load_pickle(filename)
            if not isinstance(data, dict):
                raise ValueError(f"'{filename}' holds a {type(data).__name__}, not a dict of weights")
            if "model" in data and "__author__" in data:  # detectron2 model zoo format
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            # a Caffe2 blob dict, or a plain name -> array dict (converted backbones): match names heuristically
            data = data.get("blobs", data)
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        loaded = load_torch(filename)
        if filename.endswith(".pyth"):  # pycls format
            if "model_state" not in loaded:
                raise ValueError(f"'{filename}': pycls checkpoints (.pyth) must contain 'model_state'")
            state = {k: v for k, v in loaded["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded
