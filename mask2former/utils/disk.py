"""
Writing files so that a kill or a full disk never leaves a half-written file under the final name, and full
disks reported with the file and the free space.

- :func:`atomic_write`: write beside the file, then rename over it.
- :func:`report_full_disk`: for code that writes files of its own (e.g. detectron2's evaluators), turns the
  bare ``OSError(ENOSPC)`` of a failed write, which names no file, into a :class:`DiskFullError` naming the file
  the thread opened for writing last.
"""
import errno
import os
import shutil
import sys
import threading
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["DiskFullError", "atomic_write", "disk_full_error", "free_space", "report_full_disk"]


class DiskFullError(OSError):
    """A write failed for lack of space (ENOSPC / EDQUOT); the message names the file and the free space.
    ``path`` is that file, ``kept`` says what is intact ("" when the message says nothing about it)."""

    path: str = ""
    kept: str = ""


def free_space(path: str) -> str:
    """Free space of the filesystem holding ``path`` (or its nearest existing parent), human readable."""
    folder = os.path.abspath(path)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown free space"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    raise AssertionError("unreachable")


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: str, error: OSError, kept: str = "") -> DiskFullError:
    """The error to raise when writing ``path`` failed with ``error`` (ENOSPC); ``kept`` says what is intact."""
    message = f"No space left on the device writing '{path}' ({free_space(path)} on its filesystem)"
    if kept:
        message += f"; {kept}"
    full = DiskFullError(error.errno, message + ". Free some space and run again (with --resume for training).")
    full.path, full.kept = path, kept
    return full


# The file each thread opened for writing last, while report_full_disk() is active in it; recorded by an audit
# hook on Python's "open" event (builtin open, io.open, os.open), the only place that sees every open.
_WRITES = threading.local()
_HOOK_LOCK = threading.Lock()
_HOOK_INSTALLED = False
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


def _remember_opened_for_writing(event: str, args) -> None:
    if event != "open" or not getattr(_WRITES, "depth", 0):
        return
    try:  # an audit hook that raises would fail the open itself
        path, _, flags = args
        if flags & _WRITE_FLAGS and isinstance(path, (str, bytes, os.PathLike)):
            _WRITES.last = os.fsdecode(path)
    except Exception:
        pass


def _install_hook() -> None:
    global _HOOK_INSTALLED
    with _HOOK_LOCK:
        if not _HOOK_INSTALLED:
            sys.addaudithook(_remember_opened_for_writing)  # (audit hooks cannot be removed: it stays, idle)
            _HOOK_INSTALLED = True


@contextmanager
def report_full_disk(default_path: str, kept: str = "") -> Iterator[None]:
    """
    While active, a full disk (``OSError`` ENOSPC / EDQUOT) raised in this thread leaves as a
    :class:`DiskFullError` naming the file: the error's own file name when it has one (a failed open), else the
    file this thread opened for writing last inside the block (a failed write or flush names none), else
    ``default_path``. A :class:`DiskFullError` passes unchanged.
    """
    _install_hook()
    depth = getattr(_WRITES, "depth", 0)
    if depth == 0:
        _WRITES.last = None
    _WRITES.depth = depth + 1
    try:
        yield
    except OSError as e:
        if not is_disk_full(e) or isinstance(e, DiskFullError):
            raise
        path = e.filename if isinstance(e.filename, str) else (_WRITES.last or default_path)
        raise disk_full_error(path, e, kept) from e
    finally:
        _WRITES.depth -= 1


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. on Windows folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str, mode: str = "wb", kept: str = "") -> Iterator[IO]:
    """
    Open a temporary file beside ``path`` for writing; on success flush, fsync, rename it to ``path`` and
    fsync the folder, so that ``path`` is either its old content or the complete new one, whenever the
    process dies. On failure the temporary file is removed (``path`` is untouched) and a full disk raises
    :class:`DiskFullError` naming ``path`` and the free space.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if is_disk_full(e):
            raise disk_full_error(path, e, kept) from e
        raise
    _fsync_dir(folder)
