"""GUI tests run on the app's loop: a real qasync selector loop over the one QApplication.

Every async test in tests/gui gets a fresh ``qasync.QSelectorEventLoop`` through pytest-asyncio's
``pytest_asyncio_loop_factories`` hook (a conftest hook, so it applies under this directory only).

Inside an async test, wait on Qt signals with ``tests.support.qt.wait_signal``, not ``qtbot.waitSignal``/``waitUntil``:
those spin a nested Qt event loop inside the running coroutine, and qasync cannot run the loop's callbacks from
there (the test hangs). ``wait_signal`` awaits instead, so the loop keeps running everything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import qasync
from PySide6.QtWidgets import QApplication

from tests.support.app import Cairn, cairn_factory
from tests.support.model_server import ModelServer
from tests.support.qt import (
    LoopTicker,
)

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
