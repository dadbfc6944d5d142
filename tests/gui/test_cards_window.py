"""The window's conversation as message cards (gui/conversation/view.py ``QuickChatView``) against a real model
server and real storage, driven as a user would: typing and Enter in the composer, the mouse on the cards'
buttons (Stop, Copy, Edit, Regenerate, Retry, "Thought for N s"). QML items are found by their ``objectName``.
Waiting is on conditions with deadlines; the helpers are in tests/support/app.py, the fixtures in
tests/gui/conftest.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtQuick import QQuickItem
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QWidget

from chat.service import ChatMessage, Usage
from gui.conversation.view import QuickChatView
from tests.support.app import (
    WAIT,
    Cairn,
    LoopWatch,
    cairn_factory,
    roles_and_texts,
    send_and_wait,
    type_and_send,
    until,
    window_of,
)
from tests.support.cards import (
    card,
    click,
    descendants,
    on_screen,
    part,
    rows,
    shown,
    toolbar_button,
    view_of,
    words,
)
from tests.support.model_server import ModelServer, tokenize

BLOCKED = 0.25
"""A loop gap (p95) no slow machine reaches but a blocked loop does (as in tests/gui/test_main_window.py)."""


# --- the start ------------------------------------------------------------------------------------------------


async def test_the_window_shows_cards_even_where_the_settings_file_still_chooses_the_text_view(
    tmp_path: Path, server: ModelServer
) -> None:
    cairn = cairn_factory(tmp_path, server)
    # Someone who tried the cards preview, or went back to the text view, still has CHAT_VIEW in the settings file.
    settings_file = tmp_path / "config" / "settings.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    settings_file.write_text(json.dumps({**settings, "CHAT_VIEW": "text"}), encoding="utf-8")
    async with cairn() as app:  # (cairn_factory asserts that the settings have no problem to report)
        window = window_of(app)
        assert window.findChild(QWidget, "settingsProblems") is None  # nothing to warn about either
        view = view_of(app)  # the cards
        note = view.quick.rootObject().findChild(QQuickItem, "note")
        assert note is not None and note.isVisible()
        assert str(note.property("text")).startswith("Start a conversation")


# --- sending and streaming ------------------------------------------------------------------------------------


async def test_a_typed_message_streams_into_a_card_and_is_stored(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        text = "tell me about cairns on the ridge"
        tokens = tokenize("Echo: " + text)
        server.pause()  # nothing yet: the card counts the wait
        type_and_send(qtbot, window, text)
        stream = await card(view, "stream")
        await until(lambda: shown(stream, "waiting"), "the wait for the first word")
        assert str(part(stream, "waiting").property("text")).startswith("Waiting for the model…")  # type: ignore[union-attr]
        assert shown(stream, "stopButton")
        assert [m.role for m in view.messages()] == ["user"]  # shown at once, before any reply

        server.pause(after_tokens=2)  # held streams go on, up to their second token
        first_two = "".join(tokens[:2])
        await until(lambda: view.stream_text() == first_two, "the first two tokens in the view")
        await until(lambda: first_two.strip() in words(stream), "the first two tokens drawn")
        assert not shown(stream, "waiting")

        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        server.resume()
        await until(lambda: bool(finished), "the reply to finish")
        assert roles_and_texts(view.messages()) == [("user", text), ("assistant", "".join(tokens))]
        assert all(not m.id.startswith("pending:") for m in view.messages())  # real ids once stored
        assert not view.streaming and not view.has_error()
        reply = await card(view, view.messages()[-1].id)
        assert not shown(reply, "stopButton")
        assert re.fullmatch(r"\d\d:\d\d", str(part(reply, "timestamp").property("text")))  # type: ignore[union-attr]
        stored = await app.service.load(window.current)  # type: ignore[union-attr, arg-type]
        assert roles_and_texts(stored.messages) == [("user", text), ("assistant", "".join(tokens))]


async def test_stop_on_the_streaming_card_keeps_the_partial_reply(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        text = "one two three four five six seven"
        partial = "".join(tokenize("Echo: " + text)[:3])
        server.pause(after_tokens=3)
        type_and_send(qtbot, window, text)
        await server.wait_for_paused_async(timeout=WAIT)
        await until(lambda: view.stream_text() == partial, "three tokens")
        stream = await card(view, "stream")
        stop = part(stream, "stopButton")
        assert stop is not None and stop.isVisible()

        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        await click(view, stop)
        await until(lambda: bool(finished), "the stopped reply")
        server.resume()
        last = view.messages()[-1]
        assert (last.role, last.text, last.stopped) == ("assistant", partial, True)
        reply = await card(view, last.id)
        assert "stopped" in str(part(reply, "timestamp").property("text"))  # type: ignore[union-attr]
        stored = await app.service.load(window.current)  # type: ignore[union-attr, arg-type]
        assert roles_and_texts(stored.messages) == [("user", text), ("assistant", partial)]
        assert stored.messages[-1].stopped


async def test_esc_in_the_cards_stops_the_reply(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        server.pause(after_tokens=1)
        type_and_send(qtbot, window, "hello there")
        await server.wait_for_paused_async(timeout=WAIT)
        await until(lambda: view.stream_text() == "Echo: ", "the first token")
        view.quick.setFocus()
        await until(view.quick.hasFocus, "the cards focused")
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        qtbot.keyClick(view.quick, Qt.Key.Key_Escape)  # the window's: Esc stops whatever has the focus
        await until(lambda: bool(finished), "the stopped reply")
        server.resume()
        assert view.messages()[-1].stopped


async def test_a_long_reply_streams_with_coalesced_renders_and_a_responsive_loop(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        server.token_count = 400
        server.token_delay = 0.004  # ~250 tokens/s
        with LoopWatch() as watch:
            await send_and_wait(qtbot, window, "stream a lot")
        assert view.messages()[-1].text.endswith("tok399")
        assert view.flush_count < 400 / 3, view.flush_count  # never one render per token
        assert watch.p95() < BLOCKED, watch.summary()  # blocked is seconds; the fine numbers are bench/'s


async def test_a_conversation_opened_again_shows_its_cards_with_what_was_stored(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    server.reasoning = "Short thought."
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        thread = await send_and_wait(qtbot, window, "remember me")
        window.new_chat()
        await until(lambda: view.messages() == [] and view.thread_id is None, "a new conversation")
        window.open_conversation(thread)
        await until(lambda: len(view.messages()) == 2 and view.thread_id == thread, "the conversation opened")
        stored = await app.service.load(thread)  # type: ignore[union-attr]
        assert [m.id for m in view.messages()] == [m.id for m in stored.messages]
        reply = await card(view, stored.messages[-1].id)
        await until(lambda: shown(reply, "usage") and shown(reply, "thought"), "the reply's tokens and thought")
        assert re.fullmatch(r"\d\d:\d\d", str(part(reply, "timestamp").property("text")))  # type: ignore[union-attr]


# --- the toolbar ----------------------------------------------------------------------------------------------


async def test_only_the_last_reply_offers_regenerate_and_it_replaces_that_reply(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    answers = iter(["The first answer.", "The second answer.", "A better second answer."])
    server.reply = lambda _messages: next(answers)
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        thread = await send_and_wait(qtbot, window, "question")
        await send_and_wait(qtbot, window, "another question")
        first_reply, question = view.messages()[1], view.messages()[2]
        earlier = await card(view, first_reply.id)
        await toolbar_button(view, earlier, "copyButton")
        assert not shown(earlier, "regenerateButton")
        user = await card(view, question.id)
        await toolbar_button(view, user, "editButton")
        assert not shown(user, "regenerateButton")

        last = await card(view, view.messages()[-1].id)
        regenerate = await toolbar_button(view, last, "regenerateButton")
        assert regenerate.isVisible()
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        await click(view, regenerate)
        await until(lambda: bool(finished), "the regenerated reply")
        expected = [
            ("user", "question"),
            ("assistant", "The first answer."),
            ("user", "another question"),
            ("assistant", "A better second answer."),
        ]
        assert roles_and_texts(view.messages()) == expected
        stored = await app.service.load(thread)  # type: ignore[union-attr]
        assert roles_and_texts(stored.messages) == expected


async def test_edit_on_a_card_resends_the_edited_message(qtbot: Any, cairn: Cairn) -> None:
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        thread = await send_and_wait(qtbot, window, "first question")
        await send_and_wait(qtbot, window, "second question")
        first = view.messages()[0]
        row = await card(view, first.id)
        await click(view, await toolbar_button(view, row, "editButton"))
        assert window.composer.editing_id == first.id
        assert window.composer.text() == "first question"

        window.composer.edit.selectAll()
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        type_and_send(qtbot, window, "first question, edited")
        await until(lambda: bool(finished), "the reply to the edited message")
        expected = [("user", "first question, edited"), ("assistant", "Echo: first question, edited")]
        assert roles_and_texts(view.messages()) == expected
        stored = await app.service.load(thread)  # type: ignore[union-attr]
        assert roles_and_texts(stored.messages) == expected


async def test_copy_on_a_card_puts_the_message_on_the_clipboard(qtbot: Any, cairn: Cairn) -> None:
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        await send_and_wait(qtbot, window, "copy **this** reply")
        reply = view.messages()[-1]
        QGuiApplication.clipboard().setText("untouched")
        row = await card(view, reply.id)
        copy = await toolbar_button(view, row, "copyButton")
        await click(view, copy)
        await until(lambda: QGuiApplication.clipboard().text() == reply.text, "the reply on the clipboard")
        assert reply.text == "Echo: copy **this** reply"
        assert window.statusBar().currentMessage() == "Copied the message."


# --- failures -------------------------------------------------------------------------------------------------


async def test_a_failed_reply_shows_the_error_under_the_cards_and_retry_works(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        server.fail_next(500)
        text = "please answer this"
        thread = await send_and_wait(qtbot, window, text)
        assert view.has_error()
        root = view.quick.rootObject()
        block = root.findChild(QQuickItem, "errorBlock")
        assert block is not None
        await until(block.isVisible, "the error block")
        said = str(root.findChild(QQuickItem, "errorText").property("text"))  # type: ignore[union-attr]
        assert "The reply failed." in said and "model server failed" in said
        assert roles_and_texts(view.messages()) == [("user", text)]  # the user's message stays

        retry = root.findChild(QQuickItem, "retryButton")
        assert retry is not None and retry.isVisible()
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        await click(view, retry)
        await until(lambda: bool(finished), "the retried reply")
        assert not view.has_error()
        await until(lambda: not block.isVisible(), "the error block gone")
        assert roles_and_texts(view.messages()) == [("user", text), ("assistant", "Echo: " + text)]
        stored = await app.service.load(thread)  # type: ignore[union-attr]
        assert roles_and_texts(stored.messages) == [("user", text), ("assistant", "Echo: " + text)]


# --- what a reply carries -------------------------------------------------------------------------------------


async def test_a_reply_shows_its_reasoning_folded_and_its_tokens(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    server.reasoning = "The user asks about cairns; stacked stones mark a trail."
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        thread = await send_and_wait(qtbot, window, "what is a cairn")
        stored = await app.service.load(thread)  # type: ignore[union-attr]
        message = stored.messages[-1]
        assert message.reasoning and message.usage is not None and message.usage.output_tokens > 0
        row = await card(view, message.id)
        await until(lambda: shown(row, "thought"), "the Thought for section")
        thought = part(row, "thought")
        assert thought is not None
        assert re.fullmatch(r"▸ Thought for (\d+ s|a moment)", str(thought.property("text")))
        assert not shown(row, "reasoningText")  # folded
        await click(view, thought)
        await until(lambda: shown(row, "reasoningText"), "the reasoning unfolded")
        assert part(row, "reasoningText").property("text") == message.reasoning  # type: ignore[union-attr]

        usage = part(row, "usage")
        assert usage is not None and usage.isVisible()
        said = str(usage.property("text"))
        assert re.fullmatch(rf"{message.usage.output_tokens} tokens · \d+\.\d tok/s", said), said


async def test_a_palette_change_renders_the_cards_again_in_its_colours(qtbot: Any, cairn: Cairn) -> None:
    app_palette = QApplication.palette()
    async with cairn() as app:
        window = window_of(app)
        view = view_of(app)
        await send_and_wait(qtbot, window, "colours")
        light_code = view.bridge.property("codeBackground")
        assert not view.model.theme.dark
        dark = QPalette(app_palette)
        for role, colour in ((QPalette.ColorRole.Base, "#1e1e1e"), (QPalette.ColorRole.Text, "#eeeeee")):
            dark.setColor(role, QColor(colour))
        try:
            QApplication.setPalette(dark)
            await until(lambda: view.model.theme.dark, "the dark theme")
            assert view.bridge.property("codeBackground") != light_code
            assert roles_and_texts(view.messages()) == [("user", "colours"), ("assistant", "Echo: colours")]
            await card(view, view.messages()[-1].id)  # the cards are made again
        finally:
            QApplication.setPalette(app_palette)


# --- the view alone: what the window's reloads ask of it ------------------------------------------------------


def test_set_messages_updates_the_same_messages_in_place_and_replaces_what_changed(qtbot: Any) -> None:
    view = on_screen(qtbot, QuickChatView())
    shown = [ChatMessage("pending:1", "user", "a question"), ChatMessage("pending:2", "assistant", "an answer")]
    view.show_conversation("t", shown)
    qtbot.waitUntil(lambda: len(rows(view)) == 2, timeout=2000)
    first, reply = rows(view)  # kept: the same delegates must show the stored details

    stored = [
        ChatMessage("u1", "user", "a question", created=time.time()),
        ChatMessage("a1", "assistant", "an answer", created=time.time(), usage=Usage(12, 34, 2.0)),
        ChatMessage("u2", "user", "a second question"),
        ChatMessage("a2", "assistant", "a second answer"),
    ]
    view.set_messages("t", stored)
    assert [m.id for m in view.messages()] == ["u1", "a1", "u2", "a2"]
    qtbot.waitUntil(lambda: len(rows(view)) == 4, timeout=2000)
    assert shiboken6.isValid(first) and shiboken6.isValid(reply)  # updated in place, not made again
    assert (first.property("id"), reply.property("id")) == ("u1", "a1")
    qtbot.waitUntil(lambda: shown_text(reply, "usage") == "34 tokens · 17.0 tok/s", timeout=2000)
    assert re.fullmatch(r"\d\d:\d\d", shown_text(first, "timestamp"))

    view.begin_reply("partial")  # a reload while a reply streams keeps the reply
    view.set_messages("t", stored)
    assert view.streaming and view.stream_text() == "partial"
    view.discard_reply()

    edited = [*stored[:2], ChatMessage("u3", "user", "edited elsewhere")]
    view.set_messages("t", edited)
    assert [(m.id, m.text) for m in view.messages()][2:] == [("u3", "edited elsewhere")]
    qtbot.waitUntil(lambda: len(rows(view)) == 3, timeout=2000)
    assert shiboken6.isValid(first) and first.property("id") == "u1"


def shown_text(row: QQuickItem, name: str) -> str:
    item = part(row, name)
    return str(item.property("text")) if item is not None and item.isVisible() else ""


# --- the keyboard ------------------------------------------------------------------------------------------------


async def test_shift_tab_from_the_composer_reaches_the_newest_card_and_tab_comes_back(
    qtbot: Any, cairn: Cairn
) -> None:
    """The keyboard's way into the conversation and out: Shift+Tab from the composer lands on the newest card (its
    toolbar shows, or its last button takes the focus when the toolbar is already there), and Tab through the cards'
    buttons leaves the scene again."""
    async with cairn() as app:
        window = window_of(app)
        await send_and_wait(qtbot, window, "a question")
        view = view_of(app)
        scene = view.quick_window()
        window.composer.edit.setFocus()
        await until(lambda: window.composer.edit.hasFocus(), "the composer focused")

        for _ in range(6):  # whatever sits between them in the window's tab order
            if view.quick.hasFocus():
                break
            QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_Backtab)
        await until(view.quick.hasFocus, "Shift+Tab into the conversation")
        # The newest card, or its last button when its toolbar is already there (the mouse is over it).
        focused = scene.activeFocusItem()
        reply = await card(view, view.messages()[-1].id)
        assert focused is not None and (focused == reply or focused in descendants(reply)), focused
        await until(lambda: part(reply, "copyButton") is not None, "the focused card's toolbar")
        for _ in range(30):  # the cards and their buttons, then out of the scene
            if not view.quick.hasFocus():
                break
            QTest.keyClick(view.quick, Qt.Key.Key_Tab)
        await until(lambda: not view.quick.hasFocus(), "Tab out of the conversation")
