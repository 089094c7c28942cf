"""A generated dataset folder that is reused when complete, regenerated when damaged, and never overwritten.

A generator writes its files into a temporary sibling folder, then ``COMPLETE.json`` (the generator's name, its
parameters and the size of every file), and renames the folder into place, so concurrent callers (one per GPU,
say) are safe and an interrupted run leaves no half-written folder under the final name. On the next call:

- a folder whose marker records the same parameters and whose files all have their recorded sizes is reused;
- a folder made with other parameters raises :class:`GeneratedFolderError` naming what differs;
- a folder without a valid marker, or with missing or truncated files, is regenerated, but only if it holds
  nothing the generator did not write (anything else raises, so a user's files are never deleted).
"""
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

logger = logging.getLogger(__name__)

MARKER_FILE = "COMPLETE.json"

__all__ = ["MARKER_FILE", "GeneratedFolderError", "ensure_generated_folder", "file_sizes", "folder_state"]


class GeneratedFolderError(RuntimeError):
    """A generated dataset folder that must not be reused or replaced (other parameters, foreign files)."""


def file_sizes(folder: Path) -> Dict[str, int]:
    """Size in bytes of every file below ``folder``, keyed by its '/'-separated relative path, sorted."""
    sizes = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            sizes[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    return dict(sorted(sizes.items()))


def folder_state(
    folder: Path, params: dict, *, what: str, layout_entries: Iterable[str], implied: Optional[dict] = None
) -> Tuple[str, str]:
    """("missing" | "complete" | "partial", reason) of a generated folder for ``params``.

    ``implied`` gives the values of parameters that were added to a generator later: a marker without such a
    key was written with that value, so older folders stay valid.

    Raises GeneratedFolderError for data generated with other parameters, or for entries the generator does not
    write (``layout_entries`` are the top-level names it does) in a folder it would have to replace.
    ``what`` names the dataset in messages (e.g. "shapes world").
    """
    folder = Path(folder)
    if not folder.exists():
        return "missing", ""
    if not folder.is_dir():
        raise GeneratedFolderError(f"{what} folder {folder} (CLI --output) is a file, expected a directory or a new path")
    marker = folder / MARKER_FILE
    reason = f"no {MARKER_FILE} marker (interrupted generation?)"
    if marker.exists():
        try:
            with open(marker) as f:
                info = json.load(f)
            recorded, files = info["params"], info["files"]
            if not isinstance(recorded, dict) or not isinstance(files, dict):
                raise TypeError("params and files must be objects")
        except (OSError, ValueError, KeyError, TypeError) as e:
            reason = f"unreadable {MARKER_FILE} ({e})"
        else:
            recorded = {**(implied or {}), **recorded}
            diffs = [
                f"{key}: folder has {recorded.get(key)!r}, requested {value!r}"
                for key, value in params.items()
                if recorded.get(key) != value
            ]
            if diffs:
                raise GeneratedFolderError(
                    f"{folder} holds {what} data generated with other parameters ({'; '.join(diffs)}). "
                    "Refusing to overwrite it: delete or move it, or generate elsewhere (CLI --output; "
                    "$DETECTRON2_DATASETS for the registered datasets)."
                )
            problems = []
            for rel, size in files.items():
                path = folder / rel
                if not path.is_file():
                    problems.append(f"{rel} missing")
                elif path.stat().st_size != size:
                    problems.append(f"{rel} has {path.stat().st_size} bytes, expected {size}")
            if not problems:
                return "complete", ""
            reason = f"{len(problems)} damaged files, e.g. {problems[0]}"
    unknown = sorted(set(os.listdir(folder)) - set(layout_entries) - {MARKER_FILE})
    if unknown:
        raise GeneratedFolderError(
            f"{folder} is not a complete {what} folder ({reason}) and holds entries the generator did not "
            f"write: {unknown[:5]}. Refusing to replace it: move those away or generate elsewhere."
        )
    return "partial", reason


def ensure_generated_folder(
    folder,
    params: dict,
    write: Callable[[Path], None],
    *,
    generator: str,
    what: str,
    layout_entries: Iterable[str],
    implied: Optional[dict] = None,
) -> Tuple[Path, bool]:
    """Make ``folder`` hold a complete set made with ``params``; return (folder, whether it was written now).

    ``write(tmp)`` writes every file of the set into the existing empty folder ``tmp``; the marker is added here.
    """
    folder = Path(folder)
    layout_entries = tuple(layout_entries)
    state, reason = folder_state(folder, params, what=what, layout_entries=layout_entries, implied=implied)
    if state == "complete":
        return folder, False
    if state == "partial":
        logger.warning(f"{what.capitalize()} folder {folder} is incomplete: {reason}. Regenerating it.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
        marker = {"generator": generator, "params": params, "files": file_sizes(tmp)}
        with open(tmp / MARKER_FILE, "w") as f:
            json.dump(marker, f, indent=1)
        # Another process may have finished the same set meanwhile.
        state, _ = folder_state(folder, params, what=what, layout_entries=layout_entries, implied=implied)
        if state == "complete":
            return folder, False
        if state == "partial":
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:
            state, _ = folder_state(folder, params, what=what, layout_entries=layout_entries, implied=implied)
            if state != "complete":
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, True
