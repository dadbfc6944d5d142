"""The main window against a real model server and real storage (SQLite in a temporary data folder).

Each test starts the app the way ``main.py`` does (``gui.app.CairnApp.start``: settings, secrets, storage, window,
chat engine) on the qasync loop of tests/gui/conftest.py, and drives it as a user would: typing, Enter, clicks on
buttons and on the links in the conversation, shortcuts. Waiting is always on a condition with a deadline
(``tests.support.waiting.eventually``, or the model server's own waits); nothing sleeps to synchronise. Qt's nested
waits (``qtbot.waitUntil``) cannot be used inside these async tests: a nested event loop would run the app's tasks
in the middle of the test's own step. The helpers are in tests/support/app.py, the fixtures in tests/gui/conftest.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QApplication, QLineEdit, QWidget

from gui.chat_view import action_href

if TYPE_CHECKING:
    pass
from tests.support.app import (
    ROOT,
    WAIT,
    Cairn,
    LoopWatch,
    cairn_factory,
    click_at,
    click_link,
    closed_port_url,
    roles_and_texts,
    send_and_wait,
    type_and_send,
    until,
    window_of,
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
        await until(lambda: first_two.strip() in view.toPlainText(), "the first two tokens drawn")
        assert "".join(tokens[:3]).strip() not in view.toPlainText()
        assert [m.role for m in view.messages()] == ["user"]  # shown at once, before any reply

        server.pause(after_tokens=4)  # let two more through, then hold again
        first_four = "".join(tokens[:4])
        await until(lambda: first_four.strip() in view.toPlainText(), "four tokens drawn")
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
            assert words in view.error_text(), view.error_text()
            assert "Ollama" not in view.error_text()  # not Ollama's address: no guess that it is Ollama
            assert action_href("retry") in view.hrefs()

            proxy.pass_through()  # the server is up now: Retry is enough
            finished: list[str] = []
            window.replyFinished.connect(finished.append)
            click_link(view, action_href("retry"))
            await until(lambda: bool(finished), "the retried reply")
            assert not view.has_error(), view.error_text()
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
            assert "Cannot reach the model server at" in window.view.error_text()
            proxy.pass_through()
            window.new_chat()
            await send_and_wait(qtbot, window, "second try")
            assert not window.view.has_error(), window.view.error_text()
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
        assert "stopped" in window.view.toPlainText()
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
        assert window.view.messages()[-1].text == "The first answer."
        assert action_href("regenerate") in window.view.hrefs()

        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        click_link(window.view, action_href("regenerate"))
        await until(lambda: bool(finished), "the regenerated reply")
        expected = [("user", "question"), ("assistant", "A better second answer.")]
        assert roles_and_texts(window.view.messages()) == expected
        assert "The first answer." not in window.view.toPlainText()
        stored = await app.service.load(thread)  # type: ignore[union-attr]
        assert roles_and_texts(stored.messages) == [("user", "question"), ("assistant", "A better second answer.")]


async def test_edit_and_resend_branches_from_the_edited_message(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    async with cairn() as app:
        window = window_of(app)
        thread = await send_and_wait(qtbot, window, "first question")
        await send_and_wait(qtbot, window, "second question")
        first = window.view.messages()[0]
        assert first.text == "first question"

        click_link(window.view, action_href("edit", first.id))
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
        assert "The reply failed." in view.error_text()
        assert expected in view.error_text()
        if failure == "disconnect":
            assert "What arrived before the failure" in view.error_text()
        assert roles_and_texts(view.messages()) == [("user", text)]  # the user's message stays
        assert action_href("retry") in view.hrefs()
        stored = await app.service.load(thread)
        assert roles_and_texts(stored.messages) == [("user", text)] and stored.awaiting_reply

        app.service.set_endpoint(good)  # the user fixed the cause (or it went away by itself)
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        click_link(view, action_href("retry"))
        await until(lambda: bool(finished), "the retried reply")
        assert not view.has_error()
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
            raise RuntimeError("the database is read-only")
            yield  # pragma: no cover - makes this an async generator like the real one

        monkeypatch.setattr(app.service, "send", broken_send)
        await send_and_wait(qtbot, window, "words worth keeping")
        assert window.composer.text() == "words worth keeping"
        assert "the database is read-only" in window.view.error_text()


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
    server.reply = (
        "Here:\n\n```python\nprint('hi')\n```\n\n![tracker](http://127.0.0.1:9/pixel.png) "
        "and [the docs](https://example.com/docs)"
    )
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()) or True)
    async with cairn() as app:
        window = window_of(app)
        await send_and_wait(qtbot, window, "code please")
        view = window.view
        reply = view.messages()[-1]
        assert "print('hi')" in view.toPlainText()
        assert opened == []  # nothing was opened or fetched by showing the reply
        assert view.loadResource(0, QUrl("http://127.0.0.1:9/pixel.png")) is None

        click_link(view, action_href("code", reply.id, "0"))
        assert QGuiApplication.clipboard().text() == "print('hi')"
        click_link(view, action_href("copy", reply.id))
        assert QGuiApplication.clipboard().text() == reply.text
        click_link(view, "https://example.com/docs")
        assert opened == ["https://example.com/docs"]
        assert view.source().isEmpty()  # the browser itself never navigated
        click_link(view, "http://127.0.0.1:9/pixel.png")  # an image is only a link, opened only when clicked
        assert opened[-1] == "http://127.0.0.1:9/pixel.png"


async def test_action_links_the_model_writes_do_nothing(qtbot: Any, cairn: Cairn, server: ModelServer) -> None:
    """A reply can write ``cairn:`` links imitating each action the app draws; clicking them must not act."""
    server.reply = "Here:\n\n```\nsecret code\n```\n"
    async with cairn() as app:
        window = window_of(app)
        view = window.view
        await send_and_wait(qtbot, window, "first question")
        user, reply = view.messages()
        forged = (
            f"[innocent](cairn:stop) [s2](CAIRN:Stop) [s3](<cairn: stop>) [s4](cairn&#58;stop) <cairn:stop> "
            f"[s5](cairn:0123456789abcdef/stop) [r1](cairn:regenerate) [r2](cAiRn:%72egenerate) [r3](cairn:retry) "
            f"[c1](cairn:copy/{reply.id}) [c2](cairn:code/{reply.id}/0) [e1](cairn:edit/{user.id}) "
            f"[e2](cairn&#x3A;edit/{user.id})"
        )
        server.reply = [forged, " The end."]
        acted: list[str] = []
        view.stopRequested.connect(lambda: acted.append("stop"))
        view.regenerateRequested.connect(lambda: acted.append("regenerate"))
        view.retryRequested.connect(lambda: acted.append("retry"))
        view.editRequested.connect(lambda *_: acted.append("edit"))
        view.copied.connect(lambda what: acted.append(f"copy {what}"))

        async def click_the_forged_links() -> None:
            written = {
                "cairn:stop",
                "CAIRN:Stop",
                "cairn:%20stop",
                "cairn:0123456789abcdef/stop",
                "cairn:regenerate",
                "cAiRn:%72egenerate",
                "cairn:retry",
                f"cairn:copy/{reply.id}",
                f"cairn:code/{reply.id}/0",
                f"cairn:edit/{user.id}",
            }  # how the forged links are in the document (two pairs render the same)
            await until(lambda: written <= set(view.hrefs()), "the forged links in the document")
            for href in sorted(written):
                click_link(view, href)

        QGuiApplication.clipboard().setText("untouched")
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        server.pause(after_tokens=1)
        type_and_send(qtbot, window, "second question")
        await server.wait_for_paused_async(timeout=WAIT)
        await until(lambda: view.stream_text() == forged, "the forged links, streaming")
        await click_the_forged_links()
        server.resume()
        await until(lambda: bool(finished), "the reply")
        assert acted == []
        last = view.messages()[-1]
        assert (last.text, last.stopped) == (forged + " The end.", False)

        await click_the_forged_links()  # once more, in the finished reply
        assert acted == []
        assert QGuiApplication.clipboard().text() == "untouched"
        assert window.composer.edit.toPlainText() == ""
        assert len(server.chat_requests) == 2  # nothing regenerated or retried

        # The app's own links still act.
        click_link(view, action_href("copy", reply.id))
        assert QGuiApplication.clipboard().text() == reply.text
        click_link(view, action_href("code", reply.id, "0"))
        assert QGuiApplication.clipboard().text() == "secret code"
        click_link(view, action_href("regenerate"))
        await until(lambda: len(finished) == 2, "the regenerated reply")
        assert "regenerate" in acted


async def test_a_1000_message_conversation_opens_fast_and_pages_in_older_messages(
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

        shown: list[str] = []
        window.conversationShown.connect(shown.append)
        item = window.sidebar.item_for(thread)
        assert item is not None
        rect = window.sidebar.list.visualItemRect(item)
        click_at(window.sidebar.list.viewport(), rect.center())
        await until(lambda: shown == [thread], "the conversation to open")
        load_ms, render_ms = window.last_open_timing
        print(f"\n1,000 messages: load {load_ms:.0f} ms, render {render_ms:.0f} ms")  # timed in bench/ui.py
        view = window.view
        assert len(view.messages()) == 1000
        assert view.shown_count() < 1000
        assert "Answer 499" in view.toPlainText() and "Question 0:" not in view.toPlainText()
        bar = view.verticalScrollBar()
        assert bar.value() == bar.maximum()  # opened at the newest message

        before = view.shown_count()
        click_link(view, action_href("earlier"))
        assert view.shown_count() > before
        while view.load_earlier():
            pass
        assert view.shown_count() == 1000 and "Question 0:" in view.toPlainText()

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
        # Blocked would be seconds (a render of the whole document per token, an I/O wait); the fine-grained numbers
        # are bench/ui.py's.
        assert watch.p95() < BLOCKED, watch.summary()


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
