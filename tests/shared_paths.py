"""Where the shared reference data lives: ../shared next to the repository (override: MASK2FORMER_SHARED).

Test modules that need it call ``require(path)`` at import. Outside CI they are skipped when the data is
absent (a plain clone has no ../shared); in CI (CI=true) its absence is an error, so a misplaced folder can
never turn the compatibility and parity tests into skips.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MASK2FORMER_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "official_state_dicts.json"
GOLDEN = SHARED / "golden" / "tiny_swin_coco_panoptic"


def require(path: Path):
    """Skip the calling test module (or fail, in CI) when ``path`` does not exist."""
    if path.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        raise FileNotFoundError(f"shared reference data missing in CI: {path} (set MASK2FORMER_SHARED)")
    pytest.skip(f"shared reference data not found at {path} (set MASK2FORMER_SHARED)", allow_module_level=True)
