"""Where things live: the shared datasets folder (read in place, never copied)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/slmkit
REPO_ROOT = PACKAGE_ROOT.parents[1]  # src/slmkit -> repo (editable install / source checkout)


def datasets_dir() -> Path:
    """The shared datasets folder: $SLMKIT_DATASETS, else ../shared/datasets beside the repo or cwd."""
    env = os.environ.get("SLMKIT_DATASETS")
    if env:
        return Path(env)
    for base in (REPO_ROOT, Path.cwd()):
        candidate = (base / ".." / "shared" / "datasets").resolve()
        if candidate.is_dir():
            return candidate
    return (REPO_ROOT / ".." / "shared" / "datasets").resolve()
