"""Folders for storage tests."""

from __future__ import annotations

import tempfile
from pathlib import Path


def unwritable_dir(base: Path | None = None) -> Path:
    """A data dir nobody can create, root included: a path under a regular file (in ``base``, else a new temp dir)."""
    blocker = (base or Path(tempfile.mkdtemp())) / "not-a-directory"
    blocker.write_text("")
    return blocker / "data"
