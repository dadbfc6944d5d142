"""GUI tests run on the app's loop: a real qasync selector loop over the one QApplication.

Every async test in tests/gui gets a fresh ``qasync.QSelectorEventLoop`` through pytest-asyncio's
``pytest_asyncio_loop_factories`` hook (a conftest hook, so it applies under this directory only).

Inside an async test, wait on Qt signals with ``wait_signal`` below, not ``qtbot.waitSignal``/``waitUntil``:
those spin a nested Qt event loop inside the running coroutine, and qasync cannot run the loop's callbacks from
there (the test hangs). ``wait_signal`` awaits instead, so the loop keeps running everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import qasync
from PySide6.QtCore import QTimer, SignalInstance
from PySide6.QtWidgets import QApplication

from tests.support.app import Cairn, cairn_factory
from tests.support.model_server import ModelServer

# Every loop stays referenced for the session. A closed qasync loop can still have Qt timers pending on its
# timer QObject; if the cyclic GC frees that object while Qt delivers one of them (a failed test's traceback
# keeps the loop alive until a random later moment), the process crashes in QCoreApplication::notify.
_LOOPS: list[asyncio.AbstractEventLoop] = []


def _qt_loop() -> asyncio.AbstractEventLoop:
    app = QApplication.instance() or QApplication([])
    loop = qasync.QSelectorEventLoop(app)
    _LOOPS.append(loop)
    return loop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    return {"qasync": _qt_loop}


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


@pytest.fixture
def ticker() -> Iterator[LoopTicker]:
    ticker = LoopTicker()
    yield ticker
    ticker.timer.stop()


@pytest.fixture(scope="module", autouse=True)
def _app_setup(qapp: QApplication) -> Iterator[None]:
    quits = qapp.quitOnLastWindowClosed()
    qapp.setQuitOnLastWindowClosed(False)  # closing a test's window must not end the test's event loop
    yield
    qapp.setQuitOnLastWindowClosed(quits)


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as model_server:
        yield model_server


@pytest.fixture
def cairn(tmp_path: Path, server: ModelServer) -> Cairn:
    return cairn_factory(tmp_path, server)
