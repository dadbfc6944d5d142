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
"""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL = 0.001


def tune_interpreter() -> None:
    """At process start."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def freeze_startup_objects() -> None:
    """Once start-up is done (the chat engine loaded)."""
    gc.freeze()
