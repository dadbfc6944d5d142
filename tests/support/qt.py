"""Waiting in Qt tests on the app's own loop: a signal awaited (not a nested Qt event loop, which qasync cannot run
the loop's callbacks from), and a timer that measures how long the loop went without running."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QTimer, SignalInstance


async def wait_signal(
    signal: SignalInstance,
    timeout: float,
    predicate: Callable[[Any], bool] | None = None,
    *,
    already: Callable[[], Any] | None = None,
) -> Any:
    """The first value ``signal`` carries that satisfies ``predicate``, within ``timeout`` seconds.

    ``already``: a check made first (after connecting, so nothing is missed); a truthy result is returned at once.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def slot(*args: Any) -> None:
        value = args[0] if len(args) == 1 else args
        if not future.done() and (predicate is None or predicate(value)):
            future.set_result(value)

    signal.connect(slot)
    try:
        if already is not None and (found := already()):
            return found
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise AssertionError(f"no matching signal within {timeout} s") from None
    finally:
        with contextlib.suppress(RuntimeError):  # the sender is gone (waiting on ``destroyed``)
            signal.disconnect(slot)


class LoopTicker:
    """A 5 ms Qt timer on the loop's thread; the largest gap between its ticks shows whether anything blocked."""

    def __init__(self, interval_ms: int = 5) -> None:
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.monotonic()))

    def start(self) -> None:
        self.ticks = [time.monotonic()]
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.ticks.append(time.monotonic())

    @property
    def max_gap(self) -> float:
        return max((b - a for a, b in zip(self.ticks, self.ticks[1:], strict=False)), default=0.0)
