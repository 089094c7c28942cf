"""Writing files so that a kill or a full disk never leaves a half-written file under the final name."""
import errno
import os
import shutil
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["DiskFullError", "atomic_write", "disk_full_error", "free_space"]


class DiskFullError(OSError):
    """A write failed for lack of space (ENOSPC / EDQUOT); the message names the file and the free space."""


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
    return DiskFullError(error.errno, message + ". Free some space and run again (with --resume for training).")


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
