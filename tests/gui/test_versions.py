"""Branches you can walk, through the real window: after Regenerate (or Edit) a message with other
versions shows "‹ 2 / 3 ›"; the arrows show the others, the conversation goes on from the one shown, and the choice
is stored with the conversation (it opens there after a restart). Real storage, a real model server."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import Cairn, cairn_factory, click_at, send_and_wait, until, window_of
from tests.support.cards import card, click, part, shown_text, view_of
from tests.support.model_server import ModelServer, last_user_text


@pytest.fixture
def app_of(tmp_path: Path, server: ModelServer) -> Cairn:
    counter = itertools.count(1)
    server.reply = lambda messages: f"Answer {next(counter)} to {last_user_text(messages)}"
    return cairn_factory(tmp_path, server)


def texts(window: Any) -> list[str]:
    return [m.text for m in window.view.messages()]


async def regenerate_and_wait(window: Any) -> None:
    finished: list[str] = []
    window.replyFinished.connect(finished.append)
    window.regenerate()
    await until(lambda: bool(finished), "the regenerated reply")
    window.replyFinished.disconnect(finished.append)


async def step_back(window: Any, reply_id: str) -> None:
    """Click "‹" beside the reply, as a user would."""
    view = window.view
    # Where a user would click: once the list has stopped moving (it scrolls to the newest after a reply).
    await until(lambda: not view.list_item().property("moving"), "the list to settle")
    row = await card(view, reply_id)
    button = part(row, "previousVersion")
    assert button is not None and button.isVisible() and button.property("enabled")
    asked: list[str] = []
    view.versionRequested.connect(asked.append)
    await click(view, button)
    await until(lambda: bool(asked), "the click on ‹ to ask for the version before")


async def test_regenerated_replies_can_be_walked_and_the_choice_is_kept(
    qtbot: Any, app_of: Cairn, server: ModelServer
) -> None:
    async with app_of() as app:
        window = window_of(app)
        thread = await send_and_wait(qtbot, window, "question")
        await regenerate_and_wait(window)
        await regenerate_and_wait(window)
        assert texts(window) == ["question", "Answer 3 to question"]
        reply = window.view.messages()[-1]
        row = await card(view_of(app), reply.id)
        label = part(row, "versionLabel")
        assert label is not None and label.isVisible() and label.property("text") == "3 / 3"

        await step_back(window, reply.id)
        await until(lambda: texts(window) == ["question", "Answer 2 to question"], "the second version shown")
        await until(lambda: "\n2 / 3\n" in shown_text(window.view), "the switcher saying 2 / 3")

        # The conversation goes on from the version shown.
        await send_and_wait(qtbot, window, "and then?")
        assert texts(window) == ["question", "Answer 2 to question", "and then?", "Answer 4 to and then?"]
        assert server.chat_requests[-1].messages[1]["content"] == "Answer 2 to question"

    async with app_of() as app:  # the choice was stored: a restart opens the conversation there
        window = window_of(app)
        window.open_conversation(thread)
        await until(lambda: len(window.view.messages()) == 4, "the conversation reopened")
        assert texts(window)[1] == "Answer 2 to question"


async def test_a_note_shows_other_versions_only_where_no_switcher_is_in_sight(
    qtbot: Any, app_of: Cairn, server: ModelServer
) -> None:
    # A regenerate's switcher is on the reply just regenerated: a note saying so as well would only be noise. Once
    # the conversation goes on, the message with other versions is further up: the note says so, and "Show it"
    # brings that message into view with the focus on its card.
    async with app_of() as app:
        window = window_of(app)
        await send_and_wait(qtbot, window, "question")
        await regenerate_and_wait(window)
        reply = window.view.messages()[-1]
        row = await card(view_of(app), reply.id)
        await until(lambda: part(row, "versionLabel").property("text") == "2 / 2", "the switcher")
        assert not window.branch_note.isVisible()

        for n in range(6):  # enough to scroll the reply with versions out of sight
            await send_and_wait(qtbot, window, f"and then {n}, " + "at some length " * 30)
        await until(lambda: window.branch_note.isVisible(), "the note")
        assert "An earlier message has other versions" in window.branch_note.text()
        view = window.view
        await until(lambda: not view.list_item().property("moving"), "the list to settle")
        assert view.list_item().property("atYEnd")
        click_at(window.branch_note.button, window.branch_note.button.rect().center())

        def focused_message() -> str | None:
            item = view.quick_window().activeFocusItem()
            while item is not None and item.objectName() != "message":
                item = item.parentItem()
            return None if item is None else item.property("id")

        await until(lambda: focused_message() == reply.id, "the card with other versions focused")
        assert not view.list_item().property("atYEnd")
