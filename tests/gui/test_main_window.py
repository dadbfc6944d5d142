"""The main window against a real model server and real storage (SQLite in a temporary data folder).

Each test starts the app the way ``main.py`` does (``gui.app.CairnApp.start``: settings, secrets, storage, window,
chat engine) on the qasync loop of tests/gui/conftest.py, and drives it as a user would: typing, Enter, clicks on
buttons, on the cards' buttons and on the links in them, shortcuts; the conversation is read as it is shown
(tests/support/cards.py). Waiting is always on a condition with a deadline
(``tests.support.waiting.eventually``, or the model server's own waits); nothing sleeps to synchronise. Qt's nested
waits (``qtbot.waitUntil``) cannot be used inside these async tests: a nested event loop would run the app's tasks
in the middle of the test's own step. The helpers are in tests/support/app.py, the fixtures in tests/gui/conftest.py.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QDesktopServices, QGuiApplication, QMouseEvent
from PySide6.QtWidgets import QApplication, QLineEdit, QWidget

from gui.main_window import MainWindow
from tests.support.app import (
    ROOT,
    WAIT,
    Cairn,
    LoopWatch,
    cairn_factory,
    click_at,
    closed_port_url,
    press_at,
    release_at,
    roles_and_texts,
    send_and_wait,
    type_and_send,
    until,
    window_of,
)
from tests.support.cards import (
    card,
    click,
    click_link,
    error_shown,
    in_order,
    part,
    retry_button,
    rows,
    shown_text,
    toolbar_button,
)
from tests.support.model_server import ModelServer, tokenize
from tests.support.netproxy import TcpProxy
from tests.support.waiting import eventually

BLOCKED = 0.25
"""A loop gap (p95) no slow machine reaches but a blocked loop does: the window's speed is measured in bench/."""

# --- sending and streaming ------------------------------------------------------------------------------------


async def test_typed_message_streams_into_the_view_token_by_token_and_is_stored(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    async with cairn() as app:
        window = window_of(app)
        view = window.view
        text = "tell me about cairns on the ridge"
        tokens = tokenize("Echo: " + text)
        assert len(tokens) >= 6

        server.pause(after_tokens=2)
        type_and_send(qtbot, window, text)
        assert window.composer.text() == ""  # handed over
        await until(lambda: window.composer.button.text() == "Stop", "the Send button to turn into Stop")
        await server.wait_for_paused_async(timeout=WAIT)
        first_two = "".join(tokens[:2])
        await until(lambda: view.stream_text() == first_two, "the first two tokens in the view")
        await until(lambda: first_two.strip() in shown_text(view), "the first two tokens drawn")
        assert "".join(tokens[:3]).strip() not in shown_text(view)
        assert [m.role for m in view.messages()] == ["user"]  # shown at once, before any reply

        server.pause(after_tokens=4)  # let two more through, then hold again
        first_four = "".join(tokens[:4])
        await until(lambda: first_four.strip() in shown_text(view), "four tokens drawn")
        assert view.stream_text() == first_four

        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        server.resume()
        await until(lambda: bool(finished), "the reply to finish")
        thread = window.current
        assert thread is not None
        assert roles_and_texts(view.messages()) == [("user", text), ("assistant", "".join(tokens))]
        assert window.composer.button.text() == "Send" and not window.composer.button.isEnabled()
        assert not view.streaming and not view.has_error()
        assert all(not m.id.startswith("pending:") for m in view.messages())  # real ids once stored

        stored = await app.service.load(thread)  # type: ignore[union-attr]
        assert roles_and_texts(stored.messages) == [("user", text), ("assistant", "".join(tokens))]
        await until(lambda: window.sidebar.thread_ids() == [thread], "the conversation in the list")
        assert window.sidebar.titles() == [text]
        assert window.windowTitle().startswith(text)


async def test_tokens_are_coalesced_and_the_loop_stays_responsive_while_streaming(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    async with cairn() as app:
        window = window_of(app)
        server.token_count = 400
        server.token_delay = 0.004  # ~250 tokens/s
        with LoopWatch() as watch:
            await send_and_wait(qtbot, window, "stream a lot")
        reply = window.view.messages()[-1]
        assert reply.text.endswith("tok399")
        assert window.view.flush_count < 400 / 3, window.view.flush_count  # never one render per token
        # Blocked would be seconds (a render of the whole document per token, an I/O wait); the fine-grained numbers
        # are bench/ui.py's.
        assert watch.p95() < BLOCKED, watch.summary()


async def test_with_no_model_chosen_the_first_model_the_server_lists_answers(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    # Not alphabetical: LiteLLM lists its configured models in order, a rate-limited test model after the main one.
    server.models = ["zeta-main", "alpha-rate-limited", "mid-model"]
    server.strict_models = True
    async with cairn_factory(tmp_path, server, settings={"MODEL_NAME": ""})() as app:
        window = window_of(app)
        assert app.service is not None
        await until(lambda: app.service is not None and app.service.endpoint.model != "", "a model picked")
        assert app.service.endpoint.model == "zeta-main"
        await send_and_wait(qtbot, window, "hello")
        assert server.chat_requests[-1].model == "zeta-main"
        assert window.view.messages()[-1].text == "Echo: hello"


async def test_a_model_server_started_after_the_app_answers_without_touching_settings(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    # No model set, and nothing listens at the server's address when the app starts (the proxy refuses, as a
    # closed port does) nor at the first send; then the server comes up at that address.
    server.models = ["zeta-main", "alpha-other"]
    with TcpProxy("127.0.0.1", server.port) as proxy:
        proxy.refuse()
        url = f"http://127.0.0.1:{proxy.port}/v1"
        async with cairn_factory(tmp_path, server, settings={"MODEL_BASE_URL": url, "MODEL_NAME": ""})() as app:
            window = window_of(app)
            view = window.view
            text = "is anyone there?"
            thread = await send_and_wait(qtbot, window, text)
            assert view.has_error()
            words = f"Cannot reach the model server at 127.0.0.1:{proxy.port} — is the server running?"
            assert words in error_shown(view), error_shown(view)
            assert "Ollama" not in error_shown(view)  # not Ollama's address: no guess that it is Ollama

            proxy.pass_through()  # the server is up now: Retry is enough
            finished: list[str] = []
            window.replyFinished.connect(finished.append)
            await click(view, retry_button(view))
            await until(lambda: bool(finished), "the retried reply")
            assert not view.has_error() and error_shown(view) == "", error_shown(view)
            assert roles_and_texts(view.messages()) == [("user", text), ("assistant", "Echo: " + text)]
            assert server.chat_requests[-1].model == "zeta-main"  # the server's first, in its order
            assert app.service is not None and app.service.endpoint.model == "zeta-main"
            assert "zeta-main" in window.model_label.text()
            assert window.current == thread

            window.new_chat()
            await send_and_wait(qtbot, window, "and a new one")
            assert view.messages()[-1].text == "Echo: and a new one"


async def test_a_first_send_after_the_model_server_comes_up_answers(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    # As above, but the user sends a new message instead of pressing Retry.
    with TcpProxy("127.0.0.1", server.port) as proxy:
        proxy.refuse()
        url = f"http://127.0.0.1:{proxy.port}/v1"
        async with cairn_factory(tmp_path, server, settings={"MODEL_BASE_URL": url, "MODEL_NAME": ""})() as app:
            window = window_of(app)
            await send_and_wait(qtbot, window, "first try")
            assert "Cannot reach the model server at" in error_shown(window.view)
            proxy.pass_through()
            window.new_chat()
            await send_and_wait(qtbot, window, "second try")
            assert not window.view.has_error() and error_shown(window.view) == "", error_shown(window.view)
            assert window.view.messages()[-1].text == "Echo: second try"
            assert server.chat_requests[-1].model == "test-model"


async def test_stop_mid_stream_keeps_the_partial_reply(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        text = "one two three four five six seven"
        tokens = tokenize("Echo: " + text)
        server.pause(after_tokens=3)
        type_and_send(qtbot, window, text)
        await server.wait_for_paused_async(timeout=WAIT)
        partial = "".join(tokens[:3])
        await until(lambda: window.view.stream_text() == partial, "three tokens")

        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Escape)  # Esc stops
        await until(lambda: bool(finished), "the stopped reply")
        server.resume()

        last = window.view.messages()[-1]
        assert (last.role, last.text, last.stopped) == ("assistant", partial, True)
        assert "· stopped" in shown_text(window.view)
        assert window.composer.button.text() == "Send"
        stored = await app.service.load(window.current)  # type: ignore[union-attr, arg-type]
        assert roles_and_texts(stored.messages) == [("user", text), ("assistant", partial)]
        assert stored.messages[-1].stopped


async def test_stop_button_stops_the_reply(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        server.pause(after_tokens=1)
        type_and_send(qtbot, window, "hello there")
        await server.wait_for_paused_async(timeout=WAIT)
        await until(lambda: window.view.stream_text() == "Echo: ", "the first token")
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        assert window.composer.button.text() == "Stop"
        window.composer.button.click()
        await until(lambda: bool(finished), "the stopped reply")
        server.resume()
        assert window.view.messages()[-1].stopped
        assert app.service is not None and not app.service.is_running(window.current or "")


async def test_regenerate_replaces_the_last_reply(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    answers = iter(["The first answer.", "A better second answer."])
    server.reply = lambda _messages: next(answers)
    async with cairn() as app:
        window = window_of(app)
        thread = await send_and_wait(qtbot, window, "question")
        view = window.view
        assert view.messages()[-1].text == "The first answer."
        assert "The first answer." in shown_text(view)
        regenerate = await toolbar_button(view, await card(view, view.messages()[-1].id), "regenerateButton")
        assert regenerate.isVisible()

        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        await click(view, regenerate)
        await until(lambda: bool(finished), "the regenerated reply")
        expected = [("user", "question"), ("assistant", "A better second answer.")]
        assert roles_and_texts(view.messages()) == expected
        await until(lambda: "A better second answer." in shown_text(view), "the new reply shown")
        assert "The first answer." not in shown_text(view)
        stored = await app.service.load(thread)  # type: ignore[union-attr]
        assert roles_and_texts(stored.messages) == [("user", "question"), ("assistant", "A better second answer.")]


async def test_edit_and_resend_branches_from_the_edited_message(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        thread = await send_and_wait(qtbot, window, "first question")
        await send_and_wait(qtbot, window, "second question")
        first = window.view.messages()[0]
        assert first.text == "first question"

        view = window.view
        await click(view, await toolbar_button(view, await card(view, first.id), "editButton"))
        assert window.composer.editing_id == first.id
        assert window.composer.text() == "first question"
        assert window.composer.button.text().replace("&&", "&") == "Save & send"
        window.composer.edit.selectAll()
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        type_and_send(qtbot, window, "first question, edited")
        await until(lambda: bool(finished), "the reply to the edited message")
        expected = [("user", "first question, edited"), ("assistant", "Echo: first question, edited")]
        assert roles_and_texts(window.view.messages()) == expected
        assert window.composer.editing_id is None
        stored = await app.service.load(thread)  # type: ignore[union-attr]
        assert roles_and_texts(stored.messages) == expected


# --- failures -------------------------------------------------------------------------------------------------


FAILURES = {
    "401": ("refused the API key", lambda server, app: server.fail_next(401)),
    "404 model": ("model was not found", None),
    "500": ("model server failed", lambda server, app: server.fail_next(500)),
    "refused": ("Cannot reach the model server", None),
    "timeout": ("The model server sent nothing for 1 s", lambda server, app: server.hang_next()),
    "disconnect": ("", lambda server, app: server.disconnect_next(after_tokens=2)),
}


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_a_failed_reply_shows_an_inline_error_keeps_the_message_and_retry_works(
    qtbot: Any, cairn: Cairn, server: ModelServer, failure: str
) -> None:
    expected, script = FAILURES[failure]
    async with cairn(model_timeout=1.0 if failure == "timeout" else None) as app:
        window = window_of(app)
        assert app.service is not None
        good = app.service.endpoint
        if failure == "404 model":
            app.service.set_endpoint(dataclasses.replace(good, model="no-such-model"))
        elif failure == "refused":
            app.service.set_endpoint(dataclasses.replace(good, base_url=closed_port_url()))
        elif script is not None:
            script(server, app)

        text = "please answer this"
        thread = await send_and_wait(qtbot, window, text)
        view = window.view
        assert view.has_error(), failure
        said = error_shown(view)
        assert said.startswith("The reply failed."), said
        assert expected in said
        if failure == "disconnect":
            partial = "".join(tokenize("Echo: " + text)[:2])
            assert f"What arrived before the failure (not saved):\n{partial}" in said, said
        assert roles_and_texts(view.messages()) == [("user", text)]  # the user's message stays
        retry = retry_button(view)
        stored = await app.service.load(thread)
        assert roles_and_texts(stored.messages) == [("user", text)] and stored.awaiting_reply

        app.service.set_endpoint(good)  # the user fixed the cause (or it went away by itself)
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        await click(view, retry)
        await until(lambda: bool(finished), "the retried reply")
        assert not view.has_error() and error_shown(view) == ""
        assert roles_and_texts(view.messages()) == [("user", text), ("assistant", "Echo: " + text)]
        stored = await app.service.load(thread)
        assert roles_and_texts(stored.messages) == [("user", text), ("assistant", "Echo: " + text)]


async def test_a_send_that_fails_before_storing_gives_the_draft_back(
    qtbot: Any, cairn: Cairn, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cairn() as app:
        window = window_of(app)
        assert app.service is not None

        async def broken_send(_thread_id: str, _text: str, _at: str | None = None) -> AsyncIterator[Any]:
            raise RuntimeError("the database is read-only: <main.db> & its journal")  # shown as written
            yield  # pragma: no cover - makes this an async generator like the real one

        monkeypatch.setattr(app.service, "send", broken_send)
        await send_and_wait(qtbot, window, "words worth keeping")
        assert window.composer.text() == "words worth keeping"
        assert "the database is read-only: <main.db> & its journal" in error_shown(window.view)


# --- the composer ---------------------------------------------------------------------------------------------


async def test_enter_sends_and_shift_enter_adds_a_line(qtbot: Any, cairn: Cairn) -> None:
    async with cairn() as app:
        window = window_of(app)
        composer = window.composer
        assert not composer.button.isEnabled()  # nothing to send
        qtbot.keyClicks(composer.edit, "   ")
        assert not composer.button.isEnabled()  # blanks are nothing either
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
        assert window.view.messages() == []
        composer.edit.clear()
        qtbot.keyClicks(composer.edit, "line one")
        qtbot.keyClick(composer.edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
        qtbot.keyClicks(composer.edit, "line two")
        assert composer.text() == "line one\nline two"
        assert composer.button.isEnabled()
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        qtbot.keyClick(composer.edit, Qt.Key.Key_Enter, Qt.KeyboardModifier.KeypadModifier)
        await until(lambda: bool(finished), "the reply")
        assert window.view.messages()[0].text == "line one\nline two"


# --- the conversation view ------------------------------------------------------------------------------------


async def test_code_blocks_have_a_copy_button_and_links_open_only_when_clicked(
    qtbot: Any, cairn: Cairn, server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixel = f"http://127.0.0.1:{server.port}/pixel.png"  # where an image would be fetched from: the server logs it
    server.reply = f"Here:\n\n```python\nprint('hi')\n```\n\n![tracker]({pixel}) and [the docs](https://example.com/docs)"
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()) or True)
    async with cairn() as app:
        window = window_of(app)
        await send_and_wait(qtbot, window, "code please")
        view = window.view
        reply = view.messages()[-1]
        row = await card(view, reply.id)
        assert "print('hi')" in shown_text(view)
        assert "[image: tracker]" in shown_text(view)  # an image is only a link
        assert opened == []  # nothing was opened or fetched by showing the reply
        assert not [r for r in server.requests if "pixel" in r.path]

        copy_code = await card_part(view, row, "copyCodeButton")
        await click(view, copy_code)
        await until(lambda: QGuiApplication.clipboard().text() == "print('hi')", "the code on the clipboard")
        await click(view, await toolbar_button(view, row, "copyButton"))
        await until(lambda: QGuiApplication.clipboard().text() == reply.text, "the reply on the clipboard")
        await click_link(view, row, "https://example.com/docs")
        await until(lambda: opened == ["https://example.com/docs"], "the link opened in the browser")
        await click_link(view, row, pixel)  # opened only when clicked, by the browser
        await until(lambda: opened[-1:] == [pixel], "the image's link opened in the browser")
        assert not [r for r in server.requests if "pixel" in r.path]  # the app itself fetched nothing


async def card_part(view: Any, row: Any, name: str) -> Any:
    """A part of a card that is always there (not in the hover toolbar), once made."""
    await until(lambda: part(row, name) is not None, name)
    found = part(row, name)
    assert found is not None and found.isVisible()
    return found


FORGED_HREF = re.compile(r'href="([^"]*)"')


def links_in(row: Any) -> set[str]:
    """The targets of the links drawn in a card (read from its text items' HTML)."""
    found: set[str] = set()
    for item in in_order(row):
        if item.metaObject().className().startswith("QQuickText") and item.isVisible():
            found.update(html.unescape(h) for h in FORGED_HREF.findall(str(item.property("text"))))
    return found


async def test_links_the_model_writes_to_the_app_do_nothing(
    qtbot: Any, cairn: Cairn, server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply can write ``cairn:`` links imitating the actions the text view drew as links (and other schemes): the
    cards' actions are buttons, and a click on a link opens only http(s) and mailto, in the browser."""
    server.reply = "Here:\n\n```\nsecret code\n```\n"
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()) or True)
    async with cairn() as app:
        window = window_of(app)
        view = window.view
        await send_and_wait(qtbot, window, "first question")
        user, reply = view.messages()
        forged = (
            f"[innocent](cairn:stop) [s2](CAIRN:Stop) [s4](cairn&#58;stop) <cairn:stop> "
            f"[s5](cairn:0123456789abcdef/stop) [r1](cairn:regenerate) [r2](cAiRn:%72egenerate) [r3](cairn:retry) "
            f"[c1](cairn:copy/{reply.id}) [c2](cairn:code/{reply.id}/0) [e1](cairn:edit/{user.id}) "
            f"[e2](cairn&#x3A;edit/{user.id}) [f1](ftp://127.0.0.1/x) [a1](about:blank) [q1](qrc:/x) [m1](mailto:a@b.c)"
        )
        server.reply = [forged, " The end."]
        acted: list[str] = []
        view.stopRequested.connect(lambda: acted.append("stop"))
        view.regenerateRequested.connect(lambda: acted.append("regenerate"))
        view.retryRequested.connect(lambda: acted.append("retry"))
        view.editRequested.connect(lambda *_: acted.append("edit"))
        view.versionRequested.connect(lambda *_: acted.append("version"))
        view.copied.connect(lambda what: acted.append(f"copy {what}"))
        written = {
            "cairn:stop",
            "CAIRN:Stop",
            "cairn:0123456789abcdef/stop",
            "cairn:regenerate",
            "cAiRn:%72egenerate",
            "cairn:retry",
            f"cairn:copy/{reply.id}",
            f"cairn:code/{reply.id}/0",
            f"cairn:edit/{user.id}",
            "ftp://127.0.0.1/x",
            "about:blank",
            "qrc:/x",
        }  # how the forged links are drawn (some pairs render the same)

        async def click_the_forged_links(message_id: str) -> None:
            row = await card(view, message_id)
            await until(lambda: written <= links_in(row), "the forged links drawn")
            for href in sorted(written):
                await click_link(view, row, href)

        QGuiApplication.clipboard().setText("untouched")
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        server.pause(after_tokens=1)
        type_and_send(qtbot, window, "second question")
        await server.wait_for_paused_async(timeout=WAIT)
        await until(lambda: view.stream_text() == forged, "the forged links, streaming")
        await click_the_forged_links("stream")
        server.resume()
        await until(lambda: bool(finished), "the reply")
        assert acted == [] and opened == []
        last = view.messages()[-1]
        assert (last.text, last.stopped) == (forged + " The end.", False)

        await click_the_forged_links(last.id)  # once more, in the finished reply
        assert acted == [] and opened == []
        assert QGuiApplication.clipboard().text() == "untouched"
        assert window.composer.edit.toPlainText() == ""
        assert len(server.chat_requests) == 2  # nothing regenerated or retried

        # A link the browser may open still opens there; the app's own buttons still act.
        await click_link(view, await card(view, last.id), "mailto:a@b.c")
        await until(lambda: opened == ["mailto:a@b.c"], "the mail link opened")
        first = await card(view, reply.id)
        await click(view, await toolbar_button(view, first, "copyButton"))
        await until(lambda: QGuiApplication.clipboard().text() == reply.text, "the reply copied")
        await click(view, await card_part(view, first, "copyCodeButton"))
        await until(lambda: QGuiApplication.clipboard().text() == "secret code", "the code copied")
        await click(view, await toolbar_button(view, await card(view, last.id), "regenerateButton"))
        await until(lambda: len(finished) == 2, "the regenerated reply")
        assert "regenerate" in acted


async def test_a_conversation_opens_as_the_button_goes_down_on_its_row(qtbot: Any, cairn: Cairn) -> None:
    # As in a mail client: the conversation loads while the button is still down, a click's length sooner; the
    # release that follows does not open it again.
    async with cairn() as app:
        window = window_of(app)
        first = await send_and_wait(qtbot, window, "the first conversation")
        window.new_chat()
        await send_and_wait(qtbot, window, "the second conversation")
        activated: list[str] = []
        window.sidebar.conversationActivated.connect(activated.append)
        item = window.sidebar.item_for(first)
        assert item is not None
        where = window.sidebar.list.visualItemRect(item).center()
        press_at(window.sidebar.list.viewport(), where)
        await until(lambda: window.view.thread_id == first and len(window.view.messages()) == 2, "opened on press")
        release_at(window.sidebar.list.viewport(), where)
        assert activated == [first]
        assert window.sidebar.current_thread() == first


async def test_a_1000_message_conversation_opens_at_its_end_with_few_cards_and_scrolls_to_its_start(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from chat.graph import MODEL_NODE

    async with cairn() as app:
        window = window_of(app)
        service = app.service
        assert service is not None
        thread = service.new_thread_id()
        history = []
        for i in range(500):
            history.append(HumanMessage(f"Question {i}: how does **this** work?", id=f"u{i}"))
            history.append(AIMessage(f"Answer {i}:\n\n```python\nprint({i})\n```\n\nThat is all.", id=f"a{i}"))
        await service.graph.aupdate_state(
            {"configurable": {"thread_id": thread}}, {"messages": history}, as_node=MODEL_NODE
        )
        await service.rename(thread, "A long conversation")
        await window.refresh_list()

        opened: list[str] = []
        window.conversationShown.connect(opened.append)
        item = window.sidebar.item_for(thread)
        assert item is not None
        rect = window.sidebar.list.visualItemRect(item)
        click_at(window.sidebar.list.viewport(), rect.center())
        await until(lambda: opened == [thread], "the conversation to open")
        load_ms, render_ms = window.last_open_timing
        print(f"\n1,000 messages: load {load_ms:.0f} ms, render {render_ms:.0f} ms")  # timed in bench/ui.py
        view = window.view
        assert len(view.messages()) == 1000
        await until(lambda: "Answer 499:" in shown_text(view), "the newest message shown")
        made = rows(view)
        assert 0 < len(made) < 60, len(made)  # the cards on screen (and a few around), not 1,000
        assert "Question 0:" not in shown_text(view)
        items = view.list_item()
        assert items.property("atYEnd")  # opened at the newest message

        # The user drags the scroll bar to the top: the first message is shown, still with few cards made.
        bar = next(i for i in items.childItems() if i.inherits("QQuickScrollBar"))  # the list's, not a code block's
        await drag(view, bar, from_y=bar.height() - 2, to_y=-50)
        await until(lambda: "Question 0:" in shown_text(view), "the first message shown")
        # At the top, give or take the pixel a scroll bar's position rounds to.
        assert items.property("contentY") - items.property("originY") <= 2 and rows(view)[0].property("id") == "u0"
        assert len(rows(view)) < 60
        assert "Answer 499:" not in shown_text(view)

        # and a reply streams into it at ~200 tokens/s without re-rendering the conversation or stalling the loop
        server.token_count = 200
        server.token_delay = 0.005
        flushes = view.flush_count
        with LoopWatch() as watch:
            await send_and_wait(qtbot, window, "one more")
        print(f"streaming 200 tokens into it: {view.flush_count - flushes} renders, loop {watch.summary()}")
        assert view.messages()[-1].text.endswith("tok199")
        assert len(view.messages()) == 1002
        assert view.flush_count - flushes < 200 / 3
        await until(lambda: "tok199" in shown_text(view), "the new reply shown at the end")
        # Blocked would be seconds (a render of the whole conversation per token, an I/O wait); the fine-grained
        # numbers are bench/ui.py's.
        assert watch.p95() < BLOCKED, watch.summary()


async def drag(view: Any, item: Any, *, from_y: float, to_y: float) -> None:
    """Press the left button on ``item`` (at its middle, ``from_y`` down), move to ``to_y``, release."""
    await click(view, item, QPointF(item.width() / 2, from_y))  # a frame drawn; the click itself scrolls a page
    surface = view.surface
    x = item.width() / 2
    points = [item.mapToScene(QPointF(x, y)) for y in (from_y, (from_y + to_y) / 2, to_y)]
    steps = [
        (QEvent.Type.MouseButtonPress, points[0], Qt.MouseButton.LeftButton),
        (QEvent.Type.MouseMove, points[1], Qt.MouseButton.LeftButton),
        (QEvent.Type.MouseMove, points[2], Qt.MouseButton.LeftButton),
        (QEvent.Type.MouseButtonRelease, points[2], Qt.MouseButton.NoButton),
    ]
    for kind, point, buttons in steps:
        button = Qt.MouseButton.NoButton if kind == QEvent.Type.MouseMove else Qt.MouseButton.LeftButton
        event = QMouseEvent(
            kind, point, QPointF(surface.mapToGlobal(point)), button, buttons, Qt.KeyboardModifier.NoModifier
        )
        QApplication.sendEvent(surface, event)


# --- the conversation list ------------------------------------------------------------------------------------


async def test_list_context_menu_renames_pins_exports_and_deletes(qtbot: Any, cairn: Cairn, tmp_path: Path) -> None:
    async with cairn() as app:
        window = window_of(app)
        first = await send_and_wait(qtbot, window, "first conversation")
        window.new_chat()
        second = await send_and_wait(qtbot, window, "second conversation")
        sidebar = window.sidebar
        await until(lambda: sidebar.thread_ids() == [second, first], "newest first")

        def action(thread: str, text: str) -> Any:
            return next(a for a in sidebar.context_menu(thread).actions() if a.text() == text)

        action(first, "Rename…").trigger()
        editor = sidebar.list.viewport().findChild(QLineEdit) or sidebar.list.findChild(QLineEdit)
        assert editor is not None
        editor.setText("Renamed by hand")
        qtbot.keyClick(editor, Qt.Key.Key_Return)
        await until(lambda: "Renamed by hand" in sidebar.titles(), "the new title in the list")

        async def stored_title() -> bool:
            conversations = await app.service.conversations()  # type: ignore[union-attr]
            return {c.thread_id: c.title for c in conversations}[first] == "Renamed by hand"

        await eventually(stored_title, WAIT, "the new title stored")
        await window.tasks.drain()
        assert "Renamed by hand" in sidebar.titles()  # and still there after the list refreshed

        action(first, "Pin to top").trigger()
        await until(lambda: sidebar.pinned_ids() == [first], "the pinned conversation")
        assert sidebar.thread_ids() == [first, second]  # pinned first
        assert action(first, "Unpin") is not None

        target = tmp_path / "export.md"
        await window.export(first, "markdown", target)
        exported = target.read_text(encoding="utf-8")
        assert "# Renamed by hand" in exported and "Echo: first conversation" in exported
        json_target = tmp_path / "export.json"
        dialog = window.ask_export(first, "json")
        assert dialog is not None
        dialog.selectFile(str(json_target))
        dialog.accept()
        await until(json_target.exists, "the JSON export")
        await window.tasks.drain()
        assert json.loads(json_target.read_text(encoding="utf-8"))["title"] == "Renamed by hand"

        window.open_conversation(second)
        action(second, "Delete…").trigger()
        box = window.findChild(QWidget, "deleteConfirmation")
        assert box is not None and box.isVisible()
        delete_button = next(b for b in box.buttons() if b.text() == "Delete")  # type: ignore[attr-defined]
        delete_button.click()
        await until(lambda: sidebar.thread_ids() == [first], "the deleted conversation gone")
        assert window.current is None and window.view.messages() == []  # the open one was deleted: a new chat
        assert second not in {c.thread_id for c in await app.service.conversations()}  # type: ignore[union-attr]


async def test_search_finds_conversations_by_title_and_by_message(qtbot: Any, cairn: Cairn) -> None:
    async with cairn() as app:
        window = window_of(app)
        apples = await send_and_wait(qtbot, window, "apples and pears")
        window.new_chat()
        await send_and_wait(qtbot, window, "weather report")
        window.new_chat()
        await send_and_wait(qtbot, window, "something else\nmentioning zebras in the body")
        sidebar = window.sidebar
        await until(lambda: len(sidebar.thread_ids()) == 3, "three conversations")

        qtbot.keyClicks(sidebar.search, "APPLES")
        await until(lambda: sidebar.thread_ids() == [apples], "the search by title")
        sidebar.search.clear()
        qtbot.keyClicks(sidebar.search, "zebras")
        await until(lambda: sidebar.titles() == ["something else"], "the search by message text")
        sidebar.search.setText("nothing like this")
        await until(lambda: sidebar.thread_ids() == [] and sidebar.empty_label.isVisible(), "no match")
        sidebar.search.clear()
        await until(lambda: len(sidebar.thread_ids()) == 3, "all conversations again")


# --- storage state -------------------------------------------------------------------------------------------


async def test_the_badge_opens_the_storage_details(qtbot: Any, cairn: Cairn) -> None:
    async with cairn() as app:
        window = window_of(app)
        assert window.badge.text() == "Saved on this computer"
        assert window.badge.isVisible() and not window.banner.isVisible()
        window.badge.click()
        dialog = window.details_dialog
        assert dialog is not None and dialog.isVisible()
        assert "Active tier:   sqlite" in dialog.report_text()
        dialog.close()


async def test_when_nothing_is_saved_a_red_banner_offers_an_export(qtbot: Any, cairn: Cairn, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the data folder should be", encoding="utf-8")
    async with cairn() as app:
        window = window_of(app)
        assert app.storage is not None and app.storage.manager.status().active_tier == "memory"
        assert window.banner.isVisible() and "Nothing is being saved" in window.banner.message.text()
        assert window.badge.text() == "Not saved"
        await send_and_wait(qtbot, window, "keep these words")
        window.banner.export_button.click()
        dialog = window.findChild(QWidget, "exportDialog")
        assert dialog is not None and dialog.isVisible()
        target = tmp_path / "saved.md"
        dialog.selectFile(str(target))  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]
        await until(target.exists, "the export")
        await window.tasks.drain()
        assert "Echo: keep these words" in target.read_text(encoding="utf-8")


# --- shortcuts ------------------------------------------------------------------------------------------------


async def test_shortcuts(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        window.activateWindow()
        await until(lambda: QApplication.activeWindow() is window, "the window to be active")
        thread = await send_and_wait(qtbot, window, "remember this")
        edit = window.composer.edit

        QGuiApplication.clipboard().clear()
        qtbot.keyClick(edit, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        assert QGuiApplication.clipboard().text() == "Echo: remember this"

        qtbot.keyClick(edit, Qt.Key.Key_K, Qt.KeyboardModifier.ControlModifier)
        assert window.sidebar.search.hasFocus()

        qtbot.keyClick(window.sidebar.search, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
        assert window.current is None and window.view.messages() == []
        assert window.sidebar.current_thread() is None
        assert edit.hasFocus()

        window.open_conversation(thread)
        await until(lambda: window.view.thread_id == thread and len(window.view.messages()) == 2, "reopened")
        server.pause(after_tokens=1)
        type_and_send(qtbot, window, "and stop")
        await server.wait_for_paused_async(timeout=WAIT)
        await until(lambda: window.view.stream_text() == "Echo: ", "the first token")
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        qtbot.keyClick(window.view, Qt.Key.Key_Escape)  # Esc from the conversation stops too
        await until(lambda: bool(finished), "the stopped reply")
        server.resume()
        assert window.view.messages()[-1].stopped

        qtbot.keyClick(edit, Qt.Key.Key_Comma, Qt.KeyboardModifier.ControlModifier)
        dialog = window.settings_dialog
        assert dialog is not None and dialog.isVisible()
        dialog.close()


# --- settings without a restart -------------------------------------------------------------------------------


async def test_settings_apply_without_restart(qtbot: Any, cairn: Cairn, server: ModelServer, tmp_path: Path) -> None:
    async with cairn() as app:
        window = window_of(app)
        thread = await send_and_wait(qtbot, window, "before the change")
        dialog = window.open_settings()
        dialog.model.setCurrentText("other-model")  # type: ignore[attr-defined]
        assert dialog.save() is not None  # type: ignore[attr-defined]
        dialog.close()
        await until(lambda: app.service is not None and app.service.endpoint.model == "other-model", "the new model")
        assert "other-model" in window.model_label.text()
        await send_and_wait(qtbot, window, "after the change")
        assert server.requests[-1].model == "other-model"

        # A storage setting: a Postgres URL (one that refuses connections). Storage is reopened in place: the
        # conversations stay (SQLite is the same file), Postgres is tried in the background, nothing restarts.
        old_storage = app.storage
        dialog = window.open_settings()
        dialog.use_postgres.setChecked(True)  # type: ignore[attr-defined]
        dialog.postgres_url.setText(closed_port_url().replace("http://", "postgresql://").replace("/v1", "/cairn"))  # type: ignore[attr-defined]
        dialog.connect_timeout.setValue(1.0)  # type: ignore[attr-defined]
        assert dialog.save() is not None  # type: ignore[attr-defined]
        dialog.close()
        await until(lambda: app.storage is not old_storage and window.service is app.service, "storage reopened")
        assert app.storage is not None and app.storage.manager.target is not None
        assert old_storage is not None
        await until(lambda: old_storage.manager._closed, "the old storage closed")  # after the swap, once settled
        await until(lambda: window.sidebar.thread_ids() == [thread], "the same conversations")
        await until(
            lambda: (
                window.badge.status() is not None
                and window.badge.status().active_tier == "sqlite"  # type: ignore[union-attr]
                and window.badge.status().tiers["postgres"].state in ("down", "connecting")
            ),  # type: ignore[union-attr]
            "the badge showing the new storage",
        )
        window.new_chat()
        second = await send_and_wait(qtbot, window, "after reopening storage")
        await until(lambda: set(window.sidebar.thread_ids()) == {thread, second}, "both conversations")


async def test_ok_in_settings_keeps_the_first_picked_model(
    qtbot: Any, tmp_path: Path, server: ModelServer, pg_url: str
) -> None:
    server.models = ["zeta-main", "alpha-other"]
    async with cairn_factory(tmp_path, server, settings={"MODEL_NAME": ""})() as app:
        window = window_of(app)
        await until(lambda: app.service is not None and app.service.endpoint.model == "zeta-main", "a model picked")
        # The server's first model changes meanwhile: the model in use must stay the one picked, not be lost or
        # picked again behind the user's back by a save of unrelated settings.
        server.models = ["late-model", "zeta-main"]
        old_storage = app.storage
        dialog = window.open_settings()
        dialog.use_postgres.setChecked(True)  # type: ignore[attr-defined]
        dialog.postgres_url.setText(pg_url)  # type: ignore[attr-defined]
        assert dialog.save() is not None  # type: ignore[attr-defined]
        dialog.close()
        await until(lambda: app.storage is not old_storage and window.service is app.service, "storage reopened")
        assert app.service is not None and app.service.endpoint.model == "zeta-main"
        await send_and_wait(qtbot, window, "after OK")
        assert not window.view.has_error(), window.view.error_text()
        assert window.view.messages()[-1].text == "Echo: after OK"
        assert server.chat_requests[-1].model == "zeta-main"


# --- quit and start again -------------------------------------------------------------------------------------


async def test_quit_and_start_again_brings_everything_back(qtbot: Any, cairn: Cairn) -> None:
    async with cairn() as app:
        window = window_of(app)
        first = await send_and_wait(qtbot, window, "the first conversation")
        await send_and_wait(qtbot, window, "a follow-up")
        window.new_chat()
        second = await send_and_wait(qtbot, window, "the second conversation")
        window.rename(second, "Second, renamed")
        window.set_pinned(first, True)
        await until(
            lambda: window.sidebar.pinned_ids() == [first] and "Second, renamed" in window.sidebar.titles(),
            "rename and pin applied",
        )
        window.open_conversation(first)
        await until(lambda: window.view.thread_id == first, "the first conversation open")
        window.resize(700, 520)  # within the offscreen screen (800 x 600)
        expected_first = roles_and_texts(window.view.messages())
    # the block's end quit Cairn: aboutToQuit, then shutdown (storage closed)

    async with cairn() as again:
        window2 = window_of(again)
        assert window2 is not window
        assert window2.sidebar.thread_ids() == [first, second]  # pinned first
        assert window2.sidebar.titles() == ["the first conversation", "Second, renamed"]
        assert window2.sidebar.pinned_ids() == [first]
        await until(lambda: window2.view.thread_id == first and bool(window2.view.messages()), "the last open one")
        assert window2.current == first
        assert roles_and_texts(window2.view.messages()) == expected_first
        assert (window2.width(), window2.height()) == (700, 520)
        stored = await again.service.load(second)  # type: ignore[union-attr]
        assert roles_and_texts(stored.messages) == [
            ("user", "the second conversation"),
            ("assistant", "Echo: the second conversation"),
        ]


async def test_a_long_list_is_whole_after_start_with_the_last_open_conversation_selected(
    qtbot: Any, cairn: Cairn, open_storage: Any, tmp_path: Path
) -> None:
    # The first screenful of the list is shown before the first paint and the rest after it: at the end the list is
    # whole, in order, and the conversation open at quit is open and selected, wherever it is in the list.
    from gui.app import FIRST_ROWS
    from tests.support.chatgraph import build_graph, turn

    storage = await open_storage(tmp_path / "data")
    graph = build_graph(storage.saver)
    for n in range(FIRST_ROWS + 30):
        await turn(graph, f"t{n:04}", f"conversation {n}")
    expected = [c.thread_id for c in await storage.manager.conversations()]
    await storage.close()

    async def quit_on_then_start(last_open: str) -> None:
        async with cairn() as app:
            window = window_of(app)
            await until(lambda: window.sidebar.thread_ids() == expected, "the whole list")
            window.open_conversation(last_open)
            await until(lambda: window.view.thread_id == last_open, "opened")
        with StartWatch() as watch:
            async with cairn() as again:
                window2 = window_of(again)
                await until(lambda: bool(window2.view.messages()), "its messages")
        # What the window showed when the storage stack began to load: the list read from the file alone.
        assert watch.at_storage == (expected, last_open)
        assert watch.current_in_view, "the open conversation was not scrolled to"
        assert window2.current == last_open and window2.sidebar.current_thread() == last_open

    await quit_on_then_start(expected[3])  # near the top
    await quit_on_then_start(expected[-2])  # beyond the first screenful


class StartWatch(logging.Handler):
    """What a starting window lists, which row is current and whether it is in view, as its start reaches the
    storage step."""

    def __init__(self) -> None:
        super().__init__()
        self.at_storage: tuple[list[str], str | None] | None = None
        self.current_in_view = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("startup 4/5: storage"):
            window = next(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible())
            sidebar = window.sidebar
            self.at_storage = (sidebar.thread_ids(), sidebar.current_thread())
            current = sidebar.list.currentItem()
            shown = sidebar.list.visualItemRect(current) if current is not None else None
            self.current_in_view = shown is not None and sidebar.list.viewport().rect().contains(shown)

    def __enter__(self) -> StartWatch:
        app_log = logging.getLogger("cairn.app")
        self._level = app_log.level
        app_log.setLevel(logging.INFO)
        app_log.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        app_log = logging.getLogger("cairn.app")
        app_log.removeHandler(self)
        app_log.setLevel(self._level)


async def test_quitting_while_a_reply_streams_keeps_what_arrived(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        server.pause(after_tokens=2)
        type_and_send(qtbot, window, "quit during this")
        await server.wait_for_paused_async(timeout=WAIT)
        await until(lambda: window.view.stream_text() == "Echo: quit ", "two tokens")
        thread = window.current
    server.resume()  # the reply was stopped by quitting; the server may go on, nobody listens

    async with cairn() as again:
        stored = await again.service.load(thread)  # type: ignore[union-attr, arg-type]
        assert roles_and_texts(stored.messages) == [("user", "quit during this"), ("assistant", "Echo: quit ")]
        assert stored.messages[-1].stopped


# --- the process ----------------------------------------------------------------------------------------------


def test_main_py_starts_the_window_and_quits_cleanly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "CAIRN_CONFIG_DIR": str(tmp_path / "config"),
        "CAIRN_DATA_DIR": str(tmp_path / "data"),
        "MODEL_BASE_URL": "http://127.0.0.1:9/v1",
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "-v", "--quit-after", "0.2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [line.split("startup ", 1)[1].split(" (")[0] for line in result.stderr.splitlines() if "startup " in line]
    assert steps == ["1/5: settings", "2/5: secrets", "3/5: window", "4/5: storage", "5/5: chat engine"]
    # The window paints before the storage stack (about a second of imports) is opened.
    assert result.stderr.index("window painted") < result.stderr.index("startup 4/5: storage")
    assert "shut down cleanly" in result.stderr
    assert (tmp_path / "config" / "window.ini").is_file()
