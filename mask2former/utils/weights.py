"""Checks that ``MODEL.WEIGHTS`` can be loaded before a long run starts.

The official configs name their initial weights by URL (``detectron2://ImageNetPretrained/...``) or by a bare
local file name (``swin_tiny_patch4_window7_224.pkl``, ``R-101.pkl``, COCO checkpoints for the video models).
Without network access, or without that file in the working directory, loading fails deep inside the
checkpointer; ``check_weights_available`` fails early instead, with a message saying what to pass.
"""
import os
import re

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _error(value: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"MODEL.WEIGHTS = {value!r}: {problem}. Either pass a local copy of the weights, e.g. "
        "`MODEL.WEIGHTS /path/to/file.pkl` (a detectron2 .pkl/.pth checkpoint, or a converted ImageNet backbone), "
        "or train from scratch with `MODEL.WEIGHTS \"\"` (append either to the command line or set it in the config)."
    )


def check_weights_available(cfg, allow_urls: bool = False) -> str:
    """Check that ``cfg.MODEL.WEIGHTS`` names weights that can be loaded here.

    Args:
        cfg: a detectron2 config with ``MODEL.WEIGHTS``.
        allow_urls: accept URLs (``http://``, ``https://``, ``detectron2://``, any ``scheme://``) without
            checking them, for machines that can download. By default a URL is an error.

    Returns:
        "" when training from scratch, otherwise the absolute path of the local weights file.

    Raises:
        FileNotFoundError: the value is a URL (and ``allow_urls`` is False), or a local path that is not an
            existing file. The message names the key and value and how to pass local weights or train from scratch.
    """
    value = cfg.MODEL.WEIGHTS
    if not isinstance(value, str):
        raise TypeError(f"MODEL.WEIGHTS must be a string (a path, a URL or \"\"), got {type(value).__name__}: {value!r}")
    if value == "":
        return ""
    if value.startswith("file://"):
        path = value[len("file://"):]
    elif _URL.match(value):
        if allow_urls:
            return value
        raise _error(value, "this is a URL, and weights are not downloaded here")
    else:
        path = value
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise _error(value, f"{path} is a directory, not a weights file")
    if not os.path.isfile(path):
        raise _error(value, f"no such file: {path}")
    return path
