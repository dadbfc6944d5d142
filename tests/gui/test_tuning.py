"""gui/tuning.py: what changes the interpreter for the process's life runs in a process of its own (a test process
must not see it: tests/gui/test_early_send.py); the quiet collector runs in the window and puts the collector's
thresholds back when done."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gui import tuning
from tests.support.app import Cairn, type_and_send, until, window_of
from tests.support.model_server import ModelServer

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


async def test_full_collections_wait_until_the_reply_is_done(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    """While a reply streams, however much piles up, no full collection stops the loop; one runs once the reply is
    finished and the window quiet. (The young generations are collected all along.)"""
    thresholds = gc.get_threshold()
    try:
        async with cairn() as app:
            window = window_of(app)
            collector = tuning.collect_when_quiet(window)
            server.pause(after_tokens=2)
            type_and_send(qtbot, window, "hello")
            await server.wait_for_paused_async()  # the reply streams, held after its second token
            assert window.replying()
            full, young = gc.get_stats()[2]["collections"], gc.get_stats()[0]["collections"]
            kept = [[] for _ in range(800_000)]  # long-lived objects enough for several full collections
            assert gc.get_stats()[0]["collections"] > young  # the young generation was collected meanwhile...
            assert gc.get_stats()[2]["collections"] == full, "a full collection ran while the reply streamed"
            del kept

            finished: list[str] = []
            window.replyFinished.connect(finished.append)
            server.resume()
            await until(lambda: bool(finished), "the reply to finish", timeout=30)
            await until(lambda: collector.collections == 1, "a full collection once the window is quiet")
            assert gc.get_stats()[2]["collections"] > full
    finally:
        gc.set_threshold(*thresholds)
