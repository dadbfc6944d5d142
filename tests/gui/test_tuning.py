"""gui/tuning.py in a process of its own (it changes the interpreter for the process's life, which a test process
must not see: tests/gui/test_early_send.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, linecache, sys
import PySide6.QtCore
from gui import tuning
tuning.tune_interpreter()
sys.path.insert(0, sys.argv[1])
import uses_qt, no_qt
feature = sys.modules["shibokensupport.feature"]
print(json.dumps({
    "cached": sorted(name for name in linecache.cache if name.endswith(("uses_qt.py", "no_qt.py"))),
    "uses_pyside": [feature.pyside_feature_dict.get("uses_qt"), feature.pyside_feature_dict.get("no_qt")],
    "any_file_cached": any(len(entry) == 4 and entry[1] is not None for entry in linecache.cache.values()),
}))
"""


def test_modules_imported_after_the_tuning_leave_no_source_in_memory(tmp_path: Path) -> None:
    # PySide6's import hook read every module's source into linecache for good (40 MB at idle); with the tuning
    # it still tells a module that uses PySide6 (0) from one that does not (-1), and keeps no file's lines.
    (tmp_path / "uses_qt.py").write_text("from PySide6 import QtCore\n")
    (tmp_path / "no_qt.py").write_text("VALUE = 1\n")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {"cached": [], "uses_pyside": [0, -1], "any_file_cached": False}
