"""Run coroutines from Qt slots as tasks on the app's loop, keep them alive, and report their failures.

A slot cannot await; it hands the work to ``TaskRunner.spawn`` and returns at once, so no user action ever waits
on I/O. A failed task is logged with its traceback and reported once through ``failed`` for the window to show.
Never open a modal dialog (``exec()``) inside one of these coroutines: its nested event loop would run other
tasks while this one is mid-step. Show dialogs from plain slots with ``open()`` and spawn the work after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from PySide6.QtCore import QObject, Signal

log = logging.getLogger("cairn.gui")

T = TypeVar("T")


class TaskRunner(QObject):
    """Owns the tasks started from the GUI. ``failed(what, message)`` when one raises."""

    failed = Signal(str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
        """Start ``coro`` now; ``what`` names it in logs and error messages ("Renaming the conversation"). Once the
        runner is closed (the app shuts down, storage is closing), the task is cancelled before it runs."""
        task = asyncio.get_event_loop().create_task(coro, name=f"cairn-gui: {what}")
        if self._closed:
            task.cancel()  # before its first step: none of the coroutine runs
            return task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, what))
        return task

    def _done(self, task: asyncio.Task[Any], what: str) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
        with contextlib.suppress(RuntimeError):  # the runner's C++ side may be gone during shutdown
            self.failed.emit(what, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def close(self) -> None:
        """Cancel what runs and start nothing more: a timer or a change that fires while the app shuts down (a
        list refresh after storage closed) finds the runner closed."""
        self._closed = True
        self.cancel_all()

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for the running tasks (and any they start) to finish, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
