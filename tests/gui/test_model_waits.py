"""The first hour with a model server: a slow first word, a silent server, a rate limit, through the real window.

The app is started as ``main.py`` starts it (tests/gui/test_main_window.py's ``cairn_factory``: settings file, real
storage in a temporary folder, the real test model server); the limits come from the settings file, as a user sets
them. Waits are on conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import (
    cairn_factory,
    roles_and_texts,
    send_and_wait,
    type_and_send,
    until,
    window_of,
)
from tests.support.cards import click, error_shown, retry_button, shown_text
from tests.support.model_server import ModelServer


@pytest.fixture
def server() -> Any:
    with ModelServer() as model_server:
        yield model_server


async def retry_and_wait(window: Any) -> None:
    finished: list[str] = []
    window.replyFinished.connect(finished.append)
    await click(window.view, retry_button(window.view))
    await until(lambda: bool(finished), "the retried reply")
    window.replyFinished.disconnect(finished.append)


async def test_a_slow_first_word_shows_how_long_cairn_has_waited(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    server.first_token_delay = 3.5  # the server answers at once, then "loads the model"
    async with cairn_factory(tmp_path, server)() as app:
        window = window_of(app)
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        type_and_send(qtbot, window, "are you there")
        await until(lambda: "Waiting for the model…" in shown_text(window.view), "the wait shown")
        await until(lambda: "Waiting for the model… 2 s" in shown_text(window.view), "the wait counted in seconds")
        await until(lambda: bool(finished), "the reply")
        text = shown_text(window.view)
        assert "Waiting for the model" not in text
        expected = [("user", "are you there"), ("assistant", "Echo: are you there")]
        assert roles_and_texts(window.view.messages()) == expected


async def test_a_server_that_sends_no_word_fails_after_the_first_word_limit_and_retry_answers(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    settings = {"MODEL_FIRST_TOKEN_TIMEOUT": 1, "MODEL_TOKEN_TIMEOUT": 30}
    async with cairn_factory(tmp_path, server, settings=settings)() as app:
        window = window_of(app)
        assert app.service is not None
        # Headers and the role announcement come at once, then nothing: only a word ends the wait for the first one.
        server.stall_next(after_tokens=0)
        started = time.monotonic()
        thread = await send_and_wait(qtbot, window, "hello?")
        took = time.monotonic() - started
        view = window.view
        assert "The model server sent nothing for 1 s" in error_shown(view)
        assert "MODEL_FIRST_TOKEN_TIMEOUT" in error_shown(view)
        assert took < 25, f"the limit of 1 s took {took:.1f} s"  # not the between-words limit of 30 s
        stored = await app.service.load(thread)
        assert roles_and_texts(stored.messages) == [("user", "hello?")] and stored.awaiting_reply

        await retry_and_wait(window)
        assert not view.has_error()
        assert roles_and_texts(view.messages()) == [("user", "hello?"), ("assistant", "Echo: hello?")]


async def test_a_model_that_thinks_in_empty_chunks_longer_than_the_first_word_limit_is_not_cut(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    # A reasoning model streams its thinking in fields the client drops: empty chunks, then the answer.
    server.reply = ["", "", "", "", "", "the answer"]
    server.token_delay = 0.4  # 2 s of "thinking" against a first-word limit of 1 s
    settings = {"MODEL_FIRST_TOKEN_TIMEOUT": 1, "MODEL_TOKEN_TIMEOUT": 30}
    async with cairn_factory(tmp_path, server, settings=settings)() as app:
        window = window_of(app)
        await send_and_wait(qtbot, window, "think first")
        assert not window.view.has_error(), error_shown(window.view)
        assert roles_and_texts(window.view.messages())[-1] == ("assistant", "the answer")


async def test_a_reply_that_stops_flowing_fails_after_the_between_words_limit_and_retry_answers(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    settings = {"MODEL_FIRST_TOKEN_TIMEOUT": 60, "MODEL_TOKEN_TIMEOUT": 1}
    server.reply = "one two three four five"
    async with cairn_factory(tmp_path, server, settings=settings)() as app:
        window = window_of(app)
        assert app.service is not None
        server.stall_next(after_tokens=2)
        started = time.monotonic()
        thread = await send_and_wait(qtbot, window, "count")
        took = time.monotonic() - started
        view = window.view
        assert "The model server stopped sending for 1 s in the middle of the reply" in error_shown(view)
        assert "one two" in error_shown(view)  # what arrived is shown
        assert took < 30, f"the limit of 1 s took {took:.1f} s"  # not the first-word limit of 60 s
        stored = await app.service.load(thread)
        assert roles_and_texts(stored.messages) == [("user", "count")] and stored.awaiting_reply

        await retry_and_wait(window)
        assert roles_and_texts(view.messages()) == [("user", "count"), ("assistant", "one two three four five")]


def _in(seconds: int) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    ("retry_after", "expected", "counting"),
    [
        ("20", r"it asks to wait 20 s", r"Retry in (20|1\d) s"),
        ("http-date", r"it asks to wait (1 min 5\d s|2 min)", r"Retry in (1 min 5\d s|2 min)"),
    ],
)
async def test_a_rate_limited_reply_says_when_to_try_again(
    qtbot: Any, tmp_path: Path, server: ModelServer, retry_after: str, expected: str, counting: str
) -> None:
    async with cairn_factory(tmp_path, server)() as app:
        window = window_of(app)
        server.fail_next(429, "Rate limit reached", retry_after=_in(120) if retry_after == "http-date" else retry_after)
        await send_and_wait(qtbot, window, "quick question")
        error = error_shown(window.view)
        assert "The model server is busy (rate limited)" in error
        assert re.search(expected, error), error
        assert re.search(counting, retry_button(window.view).property("text"))
        assert len(server.chat_requests) == 1  # told at once, not hidden behind the client's own retries

        await retry_and_wait(window)
        assert not window.view.has_error()
        assert roles_and_texts(window.view.messages())[-1] == ("assistant", "Echo: quick question")


async def test_retry_counts_down_the_wait_a_rate_limited_server_asked_for(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    # The message says what the server asked for when it answered; the button counts down what is left of it, and
    # says "Retry" once it is over. (A click before retries too: the wait is the server's advice.)
    async with cairn_factory(tmp_path, server)() as app:
        window = window_of(app)
        server.fail_next(429, "Rate limit reached", retry_after="2")
        await send_and_wait(qtbot, window, "quick question")
        labels: list[str] = []
        window.view.bridge.tailChanged.connect(lambda: labels.append(window.view.bridge.tail.error_retry_label))
        assert retry_button(window.view).property("text") in ("Retry in 2 s", "Retry in 1 s")
        await until(lambda: retry_button(window.view).property("text") == "Retry", "the wait over", timeout=10)
        assert "Retry in 1 s" in labels, labels  # counted down, not only shown and cleared
        await retry_and_wait(window)
        assert not window.view.has_error()


async def test_the_wait_limits_are_in_settings_and_apply_without_restart(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    async with cairn_factory(tmp_path, server)() as app:
        window = window_of(app)
        dialog: Any = window.open_settings()
        assert dialog.first_token_timeout.value() == 300
        assert dialog.token_timeout.value() == 60
        dialog.first_token_timeout.setValue(1)
        assert dialog.save() is not None
        dialog.close()
        await until(lambda: app.service is not None and app.service.endpoint.first_token_timeout == 1, "applied")

        server.stall_next(after_tokens=0)
        await send_and_wait(qtbot, window, "anyone?")
        assert "The model server sent nothing for 1 s" in error_shown(window.view)
