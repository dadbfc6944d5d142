"""The app in tests: start Cairn the way ``main.py`` does on folders under a test's ``tmp_path`` and drive its window as
a user would (typing, Enter, clicks), waiting on conditions with deadlines; the conversation's cards are read and
clicked with tests/support/cards.py.
Shared by the GUI tests (tests/gui/); their fixtures (``server``, ``cairn``, the app setup) are in
tests/gui/conftest.py.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shiboken6
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt, QTimer
from PySide6.QtGui import QGuiApplication, QMouseEvent
from PySide6.QtWidgets import QApplication, QWidget

from gui.app import CairnApp
from gui.main_window import MainWindow
from storage.secrets import SecretStore
from storage.settings import load_settings, save_settings
from tests.support.keyring_backend import MemoryKeyring

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend
from tests.support.model_server import ModelServer
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0


Cairn = Callable[..., AbstractAsyncContextManager[CairnApp]]


def cairn_factory(
    tmp_path: Path,
    server: ModelServer,
    *,
    keyring: KeyringBackend | None = None,
    settings: dict[str, object] | None = None,
) -> Cairn:
    """``async with cairn() as app``: Cairn started on folders under ``tmp_path`` (the same ones every time), and
    quit at the end of the block, inside the test, so nothing of it is left running when the test's loop stops.

    ``keyring``: the OS keyring each start finds (a fresh ``MemoryKeyring`` by default; keyring's "fail" backend for
    a machine without one). ``settings``: more settings for the file."""
    keyring = keyring if keyring is not None else MemoryKeyring()
    config_dir = tmp_path / "config"
    save_settings(
        {
            "MODEL_BASE_URL": server.base_url,
            "MODEL_NAME": "test-model",
            "CAIRN_DATA_DIR": str(tmp_path / "data"),
            **(settings or {}),
        },
        config_dir=config_dir,
        secrets=SecretStore(backend=keyring),
    )

    @contextlib.asynccontextmanager
    async def run(*, model_timeout: float | None = None) -> AsyncIterator[CairnApp]:
        settings = load_settings(environ={}, cwd=tmp_path, config_dir=config_dir, strict=False)
        assert not settings.problems
        app = CairnApp(
            QApplication.instance(),  # type: ignore[arg-type]
            settings=settings,
            secrets=SecretStore(backend=keyring),
            model_timeout=model_timeout,
        )
        try:
            window = await app.start()
            window.activateWindow()
            yield app
        finally:
            await quit_app(app)

    return run


async def quit_app(app: CairnApp) -> None:
    """What quitting does: the aboutToQuit signal, then the shutdown that runs once Qt's loop has returned."""
    window = app.window
    if window is None or not shiboken6.isValid(window):
        await app.shutdown()
        return
    QApplication.instance().aboutToQuit.emit()  # type: ignore[union-attr]
    await app.shutdown()
    window.close()
    window.deleteLater()


def window_of(app: CairnApp) -> MainWindow:
    assert app.window is not None
    return app.window


_click_clock = itertools.count(1)


def click_at(widget: QWidget, pos: QPoint) -> None:
    """A left click, delivered at once (QTest's clicks may spin a nested event loop). Each click is stamped a
    double-click interval after the one before, as QTest does: events without a time all look simultaneous, and
    Qt Quick reads clicks in a row as a double or triple click (a triple click in text selects the paragraph)."""
    stamp = next(_click_clock) * (QGuiApplication.styleHints().mouseDoubleClickInterval() + 1)
    press_at(widget, pos, stamp)
    release_at(widget, pos, stamp)


def press_at(widget: QWidget, pos: QPoint, stamp: int | None = None) -> None:
    """The left button goes down at ``pos`` (and stays down until ``release_at``)."""
    _left_button(widget, pos, QEvent.Type.MouseButtonPress, stamp)


def release_at(widget: QWidget, pos: QPoint, stamp: int | None = None) -> None:
    _left_button(widget, pos, QEvent.Type.MouseButtonRelease, stamp)


def _left_button(widget: QWidget, pos: QPoint, kind: QEvent.Type, stamp: int | None) -> None:
    if stamp is None:
        stamp = next(_click_clock) * (QGuiApplication.styleHints().mouseDoubleClickInterval() + 1)
    local = QPointF(pos)
    held = Qt.MouseButton.LeftButton if kind == QEvent.Type.MouseButtonPress else Qt.MouseButton.NoButton
    event = QMouseEvent(
        kind, local, QPointF(widget.mapToGlobal(local)), Qt.MouseButton.LeftButton, held, Qt.KeyboardModifier.NoModifier
    )
    event.setTimestamp(stamp)
    QApplication.sendEvent(widget, event)


def type_and_send(qtbot: Any, window: MainWindow, text: str) -> None:
    edit = window.composer.edit
    edit.setFocus()
    for number, line in enumerate(text.split("\n")):
        if number:
            qtbot.keyClick(edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
        qtbot.keyClicks(edit, line)
    qtbot.keyClick(edit, Qt.Key.Key_Return)


async def until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    await eventually(check, timeout, what)


async def send_and_wait(qtbot: Any, window: MainWindow, text: str) -> str:
    """Send ``text`` from the composer and wait for the reply to be complete; returns the thread id."""
    finished: list[str] = []
    window.replyFinished.connect(finished.append)
    type_and_send(qtbot, window, text)
    await until(lambda: bool(finished), f"the reply to {text!r}")
    window.replyFinished.disconnect(finished.append)
    assert window.current is not None
    return window.current


class LoopWatch:
    """Measures how long the event loop goes without running a 10 ms timer (a stall shows as a long gap)."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def __enter__(self) -> LoopWatch:
        self._last = time.perf_counter()
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.stop()

    def p95(self) -> float:
        gaps = sorted(self.gaps) or [0.0]
        return gaps[int(len(gaps) * 0.95)]

    def summary(self) -> str:
        return (
            f"{len(self.gaps)} ticks, p95 gap {self.p95() * 1000:.0f} ms, max {max(self.gaps, default=0) * 1000:.0f} ms"
        )


def roles_and_texts(messages: list[Any]) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in messages]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
