"""The one kind of event loop Cairn runs on: selector-based, on every OS.

psycopg's async mode refuses Windows' proactor loop, and both ``asyncio``'s and qasync's defaults on Windows are
proactor loops, so every entry point builds its loop here instead of taking the default.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from PySide6.QtCore import QCoreApplication

T = TypeVar("T")


def new_selector_loop() -> asyncio.AbstractEventLoop:
    """A plain asyncio loop on a selector, for command-line entry points and tests."""
    return asyncio.SelectorEventLoop(selectors.DefaultSelector())


def new_qt_loop(app: QCoreApplication) -> asyncio.AbstractEventLoop:
    """The app's loop: qasync's selector loop (``qasync.QEventLoop`` is the proactor one on Windows)."""
    import qasync  # imported here: storage/ must stay usable without Qt

    return qasync.QSelectorEventLoop(app)


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a selector loop."""
    with asyncio.Runner(loop_factory=new_selector_loop) as runner:
        return runner.run(main)
