"""The product speaks only of itself: no words about how it was made (history lives in git log)."""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".ini", ".json", ".txt", ".cfg", ".toml", ".cpp", ".h", ""}
# Words that narrate the making of the project rather than describe it (a bracketed letter in each word keeps
# these patterns from reading as such words themselves).
NARRATION = re.compile(
    r"\bs[e]ssions? \d+|\b(?:this|that|earlier|later|previous|next|last|one) s[e]ssion\b|\(s[e]ssion\b"
    r"|\bsubag[e]nts?\b|\bhelper ag[e]nts?\b|\biss[u]e\s*#?\d+|\bt[a]sk\s*#\d+"
    r"|\b(?:added|made) (?:for|by) the \w+ t[a]sk\b",
    re.IGNORECASE,
)


def _tracked_text_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    for rel in out.decode().split("\0"):
        path = REPO / rel
        if rel and path.suffix in TEXT_SUFFIXES and path.is_file() and path.name != Path(__file__).name:
            yield rel, path


def test_no_words_about_how_the_project_was_made():
    hits = []
    for rel, path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if NARRATION.search(line):
                hits.append(f"{rel}:{lineno}: {line.strip()[:100]}")
    assert not hits, "narration of the project's history (belongs in git log):\n" + "\n".join(hits)
