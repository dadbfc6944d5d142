"""Quitting while conversations live only in memory asks first; with nothing to lose it does not.

The app is started as ``main.py`` starts it (tests/gui/test_main_window.py ``cairn_factory``), offscreen, against a
real model server. Memory mode is real: the data folder cannot be created (``tests.support.places.unwritable_dir``) and
Postgres is absent, or refused by a real proxy in front of a real server until the test lets it through.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QWidget

from gui.main_window import MainWindow
from gui.storage_dialog import QuitWarning
from tests.support.app import (
    cairn_factory,
    send_and_wait,
    until,
    window_of,
)
from tests.support.model_server import ModelServer
from tests.support.places import unwritable_dir


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as model_server:
        yield model_server


async def asked(window: MainWindow) -> QuitWarning:
    await until(lambda: window.quit_warning is not None and window.quit_warning.isVisible(), "the question")
    assert window.quit_warning is not None
    return window.quit_warning


async def answered(window: MainWindow, button: Any) -> None:
    button.click()
    await until(lambda: window.quit_warning is None, "the question to close")


async def test_quitting_with_conversations_only_in_memory_asks_first(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    cairn = cairn_factory(tmp_path, server, settings={"CAIRN_DATA_DIR": str(unwritable_dir(tmp_path))})
    async with cairn() as app:
        window = window_of(app)
        assert app.storage is not None and app.storage.manager.status().active_tier == "memory"
        thread = await send_and_wait(qtbot, window, "keep these words")
        shown = [(m.role, m.text) for m in window.view.messages()]
        assert shown == [("user", "keep these words"), ("assistant", "Echo: keep these words")]

        # The window's close button: the window stays, and says what would be lost.
        assert not window.close()
        box = await asked(window)
        assert window.isVisible()
        assert box.text() == "1 conversation is not saved anywhere."
        assert "lost when Cairn quits" in box.informativeText()
        assert box.defaultButton() is box.cancel_button
        await answered(window, box.cancel_button)
        assert window.isVisible()
        assert window.sidebar.thread_ids() == [thread]
        assert [(m.role, m.text) for m in window.view.messages()] == shown

        # Ctrl+Q asks the same; Export… opens the export and quits nothing.
        window.activateWindow()
        await until(lambda: QApplication.activeWindow() is window, "the window to be active")
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
        box = await asked(window)
        await answered(window, box.export_button)
        export = window.findChild(QWidget, "exportDialog")
        assert export is not None and export.isVisible()
        target = tmp_path / "kept.md"
        export.selectFile(str(target))  # type: ignore[attr-defined]
        export.accept()  # type: ignore[attr-defined]
        await until(target.exists, "the export")
        await window.tasks.drain()
        assert "Echo: keep these words" in target.read_text(encoding="utf-8")
        assert window.isVisible()

        # The app's own Quit (Qt asks every window to close first) asks too, and Cancel keeps the app running.
        QApplication.quit()
        box = await asked(window)
        await answered(window, box.cancel_button)
        assert window.isVisible() and window.sidebar.thread_ids() == [thread]

        # Quit anyway quits: the window closes (which quits the app; the tests keep Qt's loop running).
        assert not window.close()
        box = await asked(window)
        await answered(window, box.quit_button)
        await until(lambda: not window.isVisible(), "the window to close")


@pytest.mark.parametrize("where", ["data folder", "memory, nothing written"])
async def test_with_nothing_only_in_memory_closing_asks_nothing(
    qtbot: Any, tmp_path: Path, server: ModelServer, where: str
) -> None:
    settings = {"CAIRN_DATA_DIR": str(unwritable_dir(tmp_path))} if where.startswith("memory") else {}
    async with cairn_factory(tmp_path, server, settings=settings)() as app:
        window = window_of(app)
        if where == "data folder":
            await send_and_wait(qtbot, window, "saved on this computer")
        assert window.close()
        assert not window.isVisible() and window.quit_warning is None


async def test_once_postgres_holds_what_memory_held_closing_asks_nothing(
    qtbot: Any, tmp_path: Path, server: ModelServer, pg_url: str, pg_proxy: Any
) -> None:
    pg_proxy.refuse()
    settings = {
        "CAIRN_DATA_DIR": str(unwritable_dir(tmp_path)),
        "POSTGRES_DATABASE_URL": pg_proxy.url_for(pg_url),
        "POSTGRES_CONNECT_TIMEOUT": 2,
        "POSTGRES_RETRY_MAX_SECONDS": 0.5,
    }
    async with cairn_factory(tmp_path, server, settings=settings)() as app:
        window = window_of(app)
        assert app.storage is not None and app.storage.manager.status().active_tier == "memory"
        await send_and_wait(qtbot, window, "only in memory for now")
        assert not window.close()
        await answered(window, (await asked(window)).cancel_button)

        pg_proxy.pass_through()  # Postgres answers: the sync uploads what memory holds
        await until(lambda: not window.unsaved_threads(), "memory's conversation to reach Postgres", timeout=30)
        assert window.close()
        assert not window.isVisible() and window.quit_warning is None


async def test_choosing_another_folder_while_nothing_is_saved_saves_everything_there(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    cairn = cairn_factory(tmp_path, server, settings={"CAIRN_DATA_DIR": str(unwritable_dir(tmp_path))})
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    async with cairn() as app:
        window = window_of(app)
        assert app.storage is not None and app.storage.manager.status().active_tier == "memory"
        thread = await send_and_wait(qtbot, window, "words from the memory days")
        assert window.banner.isVisible() and window.banner.folder_button.isVisible()

        dialog = window.choose_data_folder()  # the banner's button
        dialog.selectFile(str(chosen))  # the user picks the folder
        dialog.accept()
        await until(
            lambda: app.storage is not None and app.storage.manager.status().active_tier == "sqlite",
            "saving in the chosen folder",
        )
        await until(lambda: not window.banner.isVisible(), "the red banner gone")
        assert (chosen / "cairn.sqlite").exists()
        assert window.close()  # nothing only in memory any more: no question

    async with cairn() as app:  # started again: the settings name the chosen folder, which holds the words
        window = window_of(app)
        await until(lambda: window.sidebar.item_for(thread) is not None, "the conversation listed")
        window.open_conversation(thread)
        await until(
            lambda: [(m.role, m.text) for m in window.view.messages()]
            == [("user", "words from the memory days"), ("assistant", "Echo: words from the memory days")],
            "its messages",
        )


async def test_a_list_refresh_due_while_the_app_shuts_down_starts_nothing(
    qtbot: Any, tmp_path: Path, server: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A change or a timer asks for a list refresh just as the app quits: once shutdown has begun nothing starts,
    so nothing reads storage after it closed (that read counted as a failing file and moved Cairn to memory)."""
    async with cairn_factory(tmp_path, server)() as app:
        window = window_of(app)
        await send_and_wait(qtbot, window, "hello")
        QApplication.instance().aboutToQuit.emit()  # type: ignore[union-attr]
        await app.shutdown()
        caplog.clear()
        fired: list[bool] = []
        window._list_timer.timeout.connect(lambda: fired.append(True))
        window.request_list_refresh(0)
        await until(lambda: bool(fired), "the refresh timer to fire")
        await until(lambda: window.tasks.pending == 0, "nothing left running")
        assert app.storage is not None and not app.storage.manager.sqlite_failed
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], errors
