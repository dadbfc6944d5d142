"""How the interpreter runs in Cairn's process: applied once, by the entry points (``gui.app.run`` and the UI
benchmark, which measures the app as it runs), never by the app's classes, so a test process stays as Python made it.

- The switch interval: a busy worker thread (the chat engine's import, the model call: chat/offload.py) may keep the
  interpreter lock for this long while the loop's thread waits for it. Python's default, 5 ms, is paid again at each
  of the loop's many entries into Python in one turn: a busy worker made the window stall for tens of milliseconds.
- Freezing start-up's objects: what start-up allocated (mostly the modules of Qt, LangGraph, LangChain, pydantic:
  about 170,000 objects) is taken out of the cyclic garbage collector's sight. Otherwise each full collection walks
  all of them, 40–75 ms with the loop stopped, whenever enough new objects have piled up (the first open of a long
  conversation, or a send into one, set one off). Only objects that exist then are frozen; what the app allocates
  later is collected as usual. Measured in docs/PERFORMANCE.md (UI section).
- Full collections at quiet moments (``QuietCollector``): with start-up's objects frozen, a full collection still
  walks everything made since (an open conversation's messages, the caches), 50–75 ms with the loop stopped, and
  the allocations of a streaming reply set one off now and then, in whichever thread allocated last: the worst gap
  of a reply. Full collections no longer start on their own; Cairn runs one two seconds after a reply is finished
  or a conversation opened, unless a reply is streaming then (and at least every five minutes). The young
  generations are collected as usual.
- No source kept for PySide6's import hook: once PySide6 is imported, it asks of every module imported after it
  whether its source mentions "PySide6" (for its ``__feature__`` switches, PYSIDE-2029) with
  ``inspect.getsource``, which leaves each file's lines in ``linecache`` for the life of the process: the source of
  the ~1,700 modules Cairn imports, 16 MB of text held as 40 MB of line strings, a sixth of the idle process
  (docs/PERFORMANCE.md, "UI: findings"). The same question is answered by reading the file's bytes, kept nowhere.
- Two malloc arenas (glibc): each thread that allocates while another holds the main arena's lock is given an
  arena of its own, up to 8 per core, and memory freed in one is not reused by the others: the worker threads of
  start-up (the storage and chat engine imports, the model client), SQLite's and the model thread left 3 MB of such
  free space in the idle process. Python's threads take turns on the interpreter lock anyway, so they seldom
  contend for malloc's. ``MALLOC_ARENA_MAX`` does the same from the environment, read before Python starts.
"""

from __future__ import annotations

import ctypes
import gc
import linecache
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from PySide6.QtCore import QObject, QTimer

SWITCH_INTERVAL = 0.001
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's malloc.h

log = logging.getLogger(__name__)


def tune_interpreter() -> None:
    """At process start, once PySide6 is imported, before the threads."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    limit_malloc_arenas()
    read_sources_once()


DEFERRED_FULL = 1_000_000
"""The oldest generation's threshold while Cairn chooses the moments: never reached in practice."""
QUIET_COLLECT_MS = 2_000
COLLECT_AT_LEAST_EVERY_MS = 300_000


class QuietCollector(QObject):
    """Full garbage collections when the window is quiet (see the module's docstring). ``window`` has the signals
    ``replyFinished`` and ``conversationShown`` and the method ``replying()``; it owns the collector."""

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.window = window
        self.collections = 0
        self._soon = QTimer(self)
        self._soon.setSingleShot(True)
        self._soon.setInterval(QUIET_COLLECT_MS)
        self._soon.timeout.connect(self._collect)
        self._backstop = QTimer(self)
        self._backstop.setInterval(COLLECT_AT_LEAST_EVERY_MS)
        self._backstop.timeout.connect(self._collect_now)
        self._backstop.start()
        window.replyFinished.connect(self._quiet_soon)
        window.conversationShown.connect(self._quiet_soon)
        young, middle, _oldest = gc.get_threshold()
        gc.set_threshold(young, middle, DEFERRED_FULL)

    def _quiet_soon(self, _thread_id: str) -> None:
        self._soon.start()

    def _collect(self) -> None:
        if self.window.replying():
            self._soon.start()  # after the reply (its end starts the timer again anyway)
            return
        self._collect_now()

    def _collect_now(self) -> None:
        gc.collect()
        self.collections += 1
        self._backstop.start()  # the next backstop counts from here


def collect_when_quiet(window: Any) -> QuietCollector:
    """Once the window is there (an entry point's choice, like the rest of this module)."""
    return QuietCollector(window)


def freeze_startup_objects() -> None:
    """Once start-up is done (the chat engine loaded)."""
    gc.freeze()


def limit_malloc_arenas() -> None:
    """At most ``MALLOC_ARENAS`` arenas for the threads made from now on (glibc only; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): its malloc has no arenas to limit
        return
    if not libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS):
        log.debug("mallopt(M_ARENA_MAX) refused: malloc arenas not limited")


def read_sources_once() -> None:
    """PySide6's import hook answers from each module's file without filling ``linecache``; the files' lines it
    cached before are dropped (``linecache`` is only a cache: a traceback reads the lines it needs again)."""
    feature: Any = sys.modules.get("shibokensupport.feature")
    original: Callable[[ModuleType], bool] | None = getattr(feature, "_mod_uses_pyside", None)
    if original is None:
        log.debug("PySide6's feature hook not found: module sources stay cached")
        return
    if original.__module__ == __name__:
        return  # done already

    def mod_uses_pyside(module: ModuleType) -> bool:
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py"):
            try:
                with open(path, "rb") as source:
                    return b"PySide6" in source.read()
            except OSError:
                pass  # PySide6's own answer, as before
        return original(module)

    feature._mod_uses_pyside = mod_uses_pyside  # PySide6's private hook, looked up by name at each import
    for name, entry in list(linecache.cache.items()):
        if len(entry) == 4 and entry[1] is not None:  # read from a file; generated code's lines (no mtime) stay
            del linecache.cache[name]
