"""The model of a conversation, chosen from the status bar's model label (or Ctrl+M).

Against a real model server offering two models and real SQLite storage, the app started as ``main.py`` starts it.
What the server received (``server.chat_requests[-1].model``) says which model answered. Waiting is on conditions
and signals with deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QPoint, Qt

from chat.endpoints import Endpoint
from gui.main_window import MainWindow
from gui.model_picker import LOADING_TEXT, ModelMenu
from tests.support.app import (
    Cairn,
    cairn_factory,
    click_at,
    closed_port_url,
    send_and_wait,
    until,
    window_of,
)
from tests.support.model_server import ModelServer
from tests.support.qt import wait_signal

WAIT = 10.0
MODELS = ["test-model", "other-model"]


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(MODELS) as model_server:
        yield model_server


@pytest.fixture
def cairn(tmp_path: Path, server: ModelServer) -> Cairn:
    return cairn_factory(tmp_path, server)


def click_model_label(window: MainWindow) -> ModelMenu:
    """Click the model name in the status bar, as a user would; the menu it opens."""
    label = window.model_label
    assert label.isVisible()
    before = window.model_menu
    x = label.contentsRect().left() + label.fontMetrics().horizontalAdvance("Model: ") + 4
    click_at(label, QPoint(x, label.height() // 2))
    menu = window.model_menu
    assert menu is not None and menu is not before, "clicking the model's name opens the model menu"
    return menu


def press_ctrl_m(qtbot: Any, window: MainWindow) -> ModelMenu:
    before = window.model_menu
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier)
    menu = window.model_menu
    assert menu is not None and menu is not before, "Ctrl+M opens the model menu"
    return menu


async def loaded(menu: ModelMenu) -> ModelMenu:
    """The menu once the server's answer (its models or the error) is in it."""
    await wait_signal(menu.modelsLoaded, WAIT, already=lambda: menu.models is not None or menu.error is not None)
    return menu


def entries(menu: ModelMenu) -> list[tuple[str, bool, bool]]:
    """(text, enabled, checked) of each entry, separators left out."""
    return [(a.text(), a.isEnabled(), a.isChecked()) for a in menu.actions() if not a.isSeparator()]


async def choose(menu: ModelMenu, model: str) -> None:
    action = menu.action_for(model)
    assert action is not None, f"no entry for {model!r} in {entries(menu)}"
    action.trigger()
    menu.close()


def label_text(window: MainWindow) -> str:
    return window.model_label.text()


async def open_and_wait(window: MainWindow, thread: str) -> None:
    window.open_conversation(thread)
    await until(lambda: window.view.thread_id == thread and bool(window.view.messages()), "the conversation open")


# --- choosing -------------------------------------------------------------------------------------------------


async def test_a_chosen_model_answers_in_its_conversation_only_and_default_reverts(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    async with cairn() as app:
        window = window_of(app)
        first = await send_and_wait(qtbot, window, "first conversation")
        assert server.chat_requests[-1].model == "test-model"
        window.new_chat()
        second = await send_and_wait(qtbot, window, "second conversation")
        await open_and_wait(window, first)
        assert label_text(window) == 'Model: <a href="model">test-model</a> (default)'

        menu = click_model_label(window)
        assert menu.isVisible()
        # Before the server has answered (the list is asked for on a worker thread): a disabled placeholder.
        assert entries(menu) == [
            ("Default (test-model)", True, True),
            (LOADING_TEXT, False, False),
            ("Settings…", True, False),
        ]
        await loaded(menu)
        assert entries(menu) == [
            ("Default (test-model)", True, True),
            ("other-model", True, False),  # list_models sorts
            ("test-model", True, False),
            ("Settings…", True, False),
        ]
        assert [r.path.split("?")[0] for r in server.requests if r.method == "GET"][-1].endswith("/models")
        await choose(menu, "other-model")
        assert label_text(window) == 'Model: <a href="model">other-model</a>'
        await send_and_wait(qtbot, window, "now from the other model")
        assert server.chat_requests[-1].model == "other-model"
        stored = await app.service.conversation(first)  # type: ignore[union-attr]
        assert stored is not None and stored.model == "other-model"

        # Another conversation keeps the default, and the label follows the switch.
        await open_and_wait(window, second)
        assert label_text(window) == 'Model: <a href="model">test-model</a> (default)'
        await send_and_wait(qtbot, window, "still the default here")
        assert server.chat_requests[-1].model == "test-model"

        # Ctrl+M, listed in the Conversation menu, opens the same menu with the choice checked; Default reverts.
        conversation_menu = next(m for m in window.menuBar().actions() if m.text() == "&Conversation").menu()
        assert window.model_action in conversation_menu.actions()  # type: ignore[union-attr]
        assert window.model_action.text().replace("&", "") == "Model…"
        await open_and_wait(window, first)
        assert label_text(window) == 'Model: <a href="model">other-model</a>'
        menu = await loaded(press_ctrl_m(qtbot, window))
        assert menu.checked_model() == "other-model"
        await choose(menu, "")
        assert label_text(window) == 'Model: <a href="model">test-model</a> (default)'
        await send_and_wait(qtbot, window, "back to the default")
        assert server.chat_requests[-1].model == "test-model"
        stored = await app.service.conversation(first)  # type: ignore[union-attr]
        assert stored is not None and stored.model == ""

        # The label stays right once the list has been read again (a refresh must not bring back an older value).
        await window.refresh_list()
        assert label_text(window) == 'Model: <a href="model">test-model</a> (default)'


async def test_the_choice_survives_a_restart(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        chosen = await send_and_wait(qtbot, window, "this one talks to the other model")
        window.new_chat()
        default = await send_and_wait(qtbot, window, "this one keeps the default")
        await open_and_wait(window, chosen)
        await choose(await loaded(click_model_label(window)), "other-model")
        await window.tasks.drain()  # stored before quitting

    async with cairn() as again:
        window = window_of(again)
        await until(lambda: window.view.thread_id == chosen and bool(window.view.messages()), "the last open one")
        assert label_text(window) == 'Model: <a href="model">other-model</a>'
        menu = await loaded(click_model_label(window))
        assert menu.checked_model() == "other-model"
        menu.close()
        await send_and_wait(qtbot, window, "after the restart")
        assert server.chat_requests[-1].model == "other-model"
        await open_and_wait(window, default)
        assert label_text(window) == 'Model: <a href="model">test-model</a> (default)'
        await send_and_wait(qtbot, window, "and here the default")
        assert server.chat_requests[-1].model == "test-model"


async def test_a_new_conversations_choice_applies_to_its_first_reply_without_storing_it_early(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    async with cairn() as app:
        window = window_of(app)
        assert window.current is None
        await choose(await loaded(press_ctrl_m(qtbot, window)), "other-model")
        assert label_text(window) == 'Model: <a href="model">other-model</a>'
        await window.tasks.drain()
        await window.refresh_list()
        assert window.sidebar.thread_ids() == []  # nothing stored before the first message
        assert await app.service.conversations() == []  # type: ignore[union-attr]

        shown: list[list[str]] = []
        window.listRefreshed.connect(lambda: shown.append(window.sidebar.titles()))
        thread = await send_and_wait(qtbot, window, "my first words")
        assert server.chat_requests[-1].model == "other-model"
        assert len(server.chat_requests) == 1
        stored = await app.service.conversation(thread)  # type: ignore[union-attr]
        assert stored is not None and (stored.title, stored.model) == ("my first words", "other-model")
        await until(lambda: window.sidebar.titles() == ["my first words"], "the conversation listed")
        assert all(title for titles in shown for title in titles), f"an untitled conversation was listed: {shown}"
        assert label_text(window) == 'Model: <a href="model">other-model</a>'
        await send_and_wait(qtbot, window, "and the second")
        assert server.chat_requests[-1].model == "other-model"

        # The choice went with that conversation: the next new one starts on the default again.
        window.new_chat()
        assert label_text(window) == 'Model: <a href="model">test-model</a> (default)'
        await send_and_wait(qtbot, window, "a fresh conversation")
        assert server.chat_requests[-1].model == "test-model"


# --- when the server does not list its models -----------------------------------------------------------------


async def test_the_menu_shows_why_the_models_could_not_be_listed(qtbot: Any, cairn: Cairn) -> None:
    async with cairn() as app:
        window = window_of(app)
        assert app.service is not None
        app.service.set_endpoint(Endpoint(closed_port_url(), "test-model"))  # nothing listens there
        menu = await loaded(click_model_label(window))
        assert menu.models is None and menu.error is not None
        assert menu.error.startswith("Cannot reach http://127.0.0.1:")
        assert entries(menu) == [
            ("Default (test-model)", True, True),
            (menu.status_action.text(), False, False),
            ("Settings…", True, False),
        ]
        assert menu.status_action.text().startswith("Cannot reach")
        assert menu.status_action.toolTip() == menu.error

        menu.settings_action.trigger()  # Settings… is still there
        dialog = window.settings_dialog
        assert dialog is not None and dialog.isVisible()
        dialog.close()
        menu.close()
