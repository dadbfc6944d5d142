"""The conversation service end to end: real SQLite storage, the real LangGraph graph, a real HTTP model server.

Nothing is mocked. Stops and interleavings are placed with the model server's pause gate, never with sleeps, and
"stored" always means: visible through a new StorageManager opened on the same data directory.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chat.endpoints import Endpoint
from chat.events import ChatEvent, ReplyFailed, Token
from chat.service import TITLE_LENGTH, ConversationService, make_title
from storage.backends import SQLITE_FILE_NAME
from storage.index import read_index
from tests.support.chat import (
    LIMITS,
    MODEL,
    PROMPT,
    CountingReply,
    Reopen,
    closed_port,
    collect,
    history_tails,
    only_done,
    only_failed,
    pairs,
    talk,
    tokens_of,
)
from tests.support.model_server import ModelServer, last_user_text, tokenize
from tests.support.netproxy import TcpProxy

# --- send -----------------------------------------------------------------------------------------------------


async def test_send_streams_tokens_in_order_and_stores_both_messages(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    reply = "The quick brown fox jumps over the lazy dog, twice:\nonce and again."
    server.reply = reply
    thread_id = service.new_thread_id()
    question = "  Hello, world!  \nA second line that is not the title"

    events = await collect(service.send(thread_id, question))

    done = only_done(events)
    assert tokens_of(events) == tokenize(reply)  # every token, in the order the server sent them
    assert "".join(tokens_of(events)) == reply
    assert done.text == reply and not done.stopped
    assert not service.is_running(thread_id)

    service = await reopen(service)
    view = await service.load(thread_id)
    assert [(m.role, m.text) for m in view.messages] == [("user", question), ("assistant", reply)]
    assert view.messages[1].id == done.message_id
    assert not view.messages[1].stopped
    assert not view.awaiting_reply
    assert view.title == "Hello, world!"
    assert [(c.thread_id, c.title) for c in await service.conversations()] == [(thread_id, "Hello, world!")]


async def test_title_comes_from_the_first_message_only(service: ConversationService, server: ModelServer) -> None:
    first_line = "\x07Plan\x00 the 👩‍💻 trip\tto مرحبا and " + "far " * 30
    thread_id = service.new_thread_id()
    await talk(service, thread_id, "\n \n  " + first_line + "  \nsecond line")

    title = (await service.load(thread_id)).title
    assert len(title) <= TITLE_LENGTH
    assert title.startswith("Plan the 👩‍💻 trip to مرحبا and far far")  # controls gone, tab a space, ZWJ kept
    assert title.endswith("…")
    assert not any(ch in title for ch in "\x00\x07\t\n")

    await talk(service, thread_id, "A later message never renames the conversation")
    assert (await service.load(thread_id)).title == title


async def test_nothing_is_stored_before_the_first_message(
    service: ConversationService, server: ModelServer, tmp_path: Path, reopen: Reopen
) -> None:
    thread_id = service.new_thread_id()
    await service.set_model(thread_id, "other-model")  # chosen before the conversation exists
    await service.set_pinned(thread_id, True)
    assert await service.conversations() == []
    assert await service.manager.conversations() == []  # not even an untitled row: a kill now leaves nothing
    assert await read_index(tmp_path) == []

    changes: list[tuple[bool, bool]] = []
    service.manager.subscribe_changes(lambda c: changes.append((thread_id in c.turns, thread_id in c.index)))
    await talk(service, thread_id, "Pack for Porto")
    assert server.chat_requests[-1].model == "other-model"
    # The first change is a checkpoint (storage makes the conversation's row with it); the title, the model and the
    # pin follow in one write, once a stored checkpoint holds the message.
    assert changes[0] == (True, False)
    assert changes.count((False, True)) == 1

    service = await reopen(service)
    stored = await service.conversation(thread_id)
    assert stored is not None and (stored.title, stored.model, stored.pinned) == ("Pack for Porto", "other-model", True)


async def test_a_conversation_without_a_title_is_listed_under_its_first_message(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    thread_id = service.new_thread_id()
    await talk(service, thread_id, "Where is the sun\nsecond line")
    await service.rename(thread_id, "")  # a title lost (a kill between the message and its title does the same)
    assert (await service.manager.conversations())[0].title == ""
    assert [(c.thread_id, c.title) for c in await service.conversations()] == [(thread_id, "Where is the sun")]
    assert (await service.load(thread_id)).title == "Where is the sun"

    await talk(service, thread_id, "A later message")  # stores the title its first message gives, not this one
    service = await reopen(service)
    stored = await service.manager.conversations()
    assert [(c.thread_id, c.title) for c in stored] == [(thread_id, "Where is the sun")]


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Short question", "Short question"),
        ("   padded   ", "padded"),
        ("\n\n\nafter blank lines\nnext", "after blank lines"),
        ("windows\r\nline endings", "windows"),
        ("unicode\u2028line separator", "unicode"),
        ("tab\tinside", "tab inside"),
        ("bell\x07 and nul\x00 and escape\x1b[0m gone", "bell and nul and escape[0m gone"),
        ("👨‍👩‍👧 family", "👨‍👩‍👧 family"),  # the zero-width joiners stay: one emoji, not three
        ("no\u00a0break", "no\u00a0break"),
        ("\u200fשלום עולם", "\u200fשלום עולם"),  # a right-to-left mark is text, not a control
        ("x" * TITLE_LENGTH, "x" * TITLE_LENGTH),
        ("y" * (TITLE_LENGTH + 1), "y" * (TITLE_LENGTH - 1) + "…"),
        ("", "New conversation"),
        (" \n\t\x00 ", "New conversation"),
    ],
)
def test_make_title(text: str, title: str) -> None:
    assert make_title(text) == title
    assert len(make_title(text)) <= TITLE_LENGTH


async def test_system_prompt_reaches_the_server_and_is_never_stored(
    open_storage: Any, tmp_path: Path, server: ModelServer, reopen: Reopen
) -> None:
    marker = "SYSTEM-PROMPT-MARKER-7f3a"
    storage = await open_storage(tmp_path)
    service = ConversationService(storage, Endpoint(server.base_url, MODEL, system_prompt=f"Be terse. {marker}"))
    thread_id = service.new_thread_id()

    first = await talk(service, thread_id, "first")
    second = await talk(service, thread_id, "second")

    sent = server.chat_requests[-1].messages
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", f"Be terse. {marker}"),
        ("user", "first"),
        ("assistant", first.text),
        ("user", "second"),
    ]
    assert await pairs(service, thread_id) == [
        ("user", "first"),
        ("assistant", first.text),
        ("user", "second"),
        ("assistant", second.text),
    ]
    assert marker not in await service.export_json(thread_id)
    config = {"configurable": {"thread_id": thread_id}}
    async for checkpoint in service.saver.alist(config):
        assert marker not in repr(checkpoint.metadata)
        assert marker not in repr(checkpoint.checkpoint)
        assert marker not in repr(checkpoint.pending_writes)

    # A changed system prompt applies to the next reply without a restart.
    service.set_endpoint(Endpoint(server.base_url, MODEL, system_prompt="Now verbose."))
    await talk(service, thread_id, "third")
    assert server.chat_requests[-1].messages[0] == {"role": "system", "content": "Now verbose."}

    service = await reopen(service)  # closed: everything is in the database file
    assert marker not in str(await service.load(thread_id))
    assert files_containing(tmp_path, marker) == []


def files_containing(data_dir: Path, text: str) -> list[str]:
    """The SQLite files (database, WAL) in ``data_dir`` whose bytes contain ``text``."""
    files = list(data_dir.glob(SQLITE_FILE_NAME + "*"))
    assert files, f"no {SQLITE_FILE_NAME} in {data_dir}"
    return [path.name for path in files if text.encode() in path.read_bytes()]


async def test_the_conversation_model_is_what_the_server_receives(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    chosen = service.new_thread_id()
    default = service.new_thread_id()
    await service.set_model(chosen, "other-model")

    await talk(service, chosen, "to the other model")
    await talk(service, default, "to the default model")
    assert [(r.model, r.messages[-1]["content"]) for r in server.chat_requests] == [
        ("other-model", "to the other model"),
        ("test-model", "to the default model"),
    ]

    service = await reopen(service)  # the choice is stored with the conversation
    assert (await service.conversation(chosen)).model == "other-model"
    assert (await service.conversation(default)).model == ""
    assert (await service.load(chosen)).title == "to the other model"  # set_model first did not block the title
    await talk(service, chosen, "still the other model")
    assert server.chat_requests[-1].model == "other-model"

    await service.set_model(chosen, "test-model")
    await talk(service, chosen, "switched back")
    assert server.chat_requests[-1].model == "test-model"


async def test_no_model_chosen_fails_and_retry_answers_once_one_is(
    open_storage: Any, tmp_path: Path, server: ModelServer
) -> None:
    server.models = []  # nothing to pick from: a model must be chosen
    storage = await open_storage(tmp_path)
    service = ConversationService(storage, Endpoint(server.base_url, ""))
    thread_id = service.new_thread_id()

    failed = only_failed(await collect(service.send(thread_id, "anyone there?")))

    assert failed.kind == "config"
    assert "No model is chosen" in failed.message and "offers none" in failed.message
    assert server.chat_requests == []
    view = await service.load(thread_id)
    assert [(m.role, m.text) for m in view.messages] == [("user", "anyone there?")]
    assert view.awaiting_reply

    server.models = [MODEL]
    service.set_endpoint(Endpoint(server.base_url, MODEL))
    assert only_done(await collect(service.retry(thread_id))).text == "Echo: anyone there?"
    assert await pairs(service, thread_id) == [("user", "anyone there?"), ("assistant", "Echo: anyone there?")]


# --- stop -----------------------------------------------------------------------------------------------------


async def test_stop_mid_stream_keeps_exactly_the_partial_reply(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    server.reply = "alpha beta gamma delta epsilon zeta"
    server.pause(after_tokens=3)
    thread_id = service.new_thread_id()

    events: list[ChatEvent] = []
    async for event in service.send(thread_id, "count for me"):
        events.append(event)
        if len(events) == 3:
            await server.wait_for_paused_async()  # the server holds token 4: nothing more can arrive
            assert service.is_running(thread_id)
            assert service.stop(thread_id)
            stopped_at = asyncio.get_running_loop().time()

    assert asyncio.get_running_loop().time() - stopped_at < PROMPT
    done = only_done(events)
    assert tokens_of(events) == ["alpha ", "beta ", "gamma "]
    assert done.stopped and done.text == "alpha beta gamma "
    assert not service.is_running(thread_id)
    assert not service.stop(thread_id)
    server.resume()

    service = await reopen(service)
    view = await service.load(thread_id)
    assert [(m.role, m.text, m.stopped) for m in view.messages] == [
        ("user", "count for me", False),
        ("assistant", "alpha beta gamma ", True),
    ]
    assert view.messages[1].id == done.message_id
    assert not view.awaiting_reply
    assert "**Assistant** (stopped):" in await service.export_markdown(thread_id)
    assert json.loads(await service.export_json(thread_id))["messages"][1]["stopped"] is True

    # The conversation goes on after a stop.
    server.reply = None
    next_done = await talk(service, thread_id, "go on")
    assert next_done.text == "Echo: go on"
    assert [m["content"] for m in server.chat_requests[-1].messages] == [
        "count for me",
        "alpha beta gamma ",
        "go on",
    ]


async def test_stop_before_any_token_keeps_the_question_awaiting_a_reply(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    server.pause()  # streams are held before their first token
    thread_id = service.new_thread_id()
    events = service.send(thread_id, "are you there?")
    first = asyncio.ensure_future(anext(events))
    await server.wait_for_paused_async()
    assert service.is_running(thread_id)
    assert service.stop(thread_id)

    async with asyncio.timeout(PROMPT):
        failed = await first
    assert isinstance(failed, ReplyFailed)
    assert failed.kind == "stopped"
    assert failed.partial_text == ""
    assert await collect(events) == []
    server.resume()

    service = await reopen(service)
    view = await service.load(thread_id)
    assert [(m.role, m.text) for m in view.messages] == [("user", "are you there?")]
    assert view.awaiting_reply

    done = only_done(await collect(service.retry(thread_id)))
    assert done.text == "Echo: are you there?"
    assert await pairs(service, thread_id) == [("user", "are you there?"), ("assistant", "Echo: are you there?")]
    assert [m["content"] for m in server.chat_requests[-1].messages] == ["are you there?"]


async def test_stop_takes_effect_at_once_every_time(service: ConversationService, server: ModelServer) -> None:
    """Stop as the server's first bytes arrive: it used to be swallowed about one time in three (langchain-openai's
    per-chunk ``asyncio.wait_for`` on Python 3.11), leaving the run to wait for the client's read timeout."""
    for attempt in range(10):
        server.pause()
        thread_id = service.new_thread_id()
        events = service.send(thread_id, f"attempt {attempt}")
        first = asyncio.ensure_future(anext(events))
        await server.wait_for_event_async("paused", request_index=attempt)
        assert service.stop(thread_id)
        try:
            async with asyncio.timeout(PROMPT):
                failed = await first
        finally:
            server.resume()
        assert isinstance(failed, ReplyFailed) and failed.kind == "stopped", (attempt, failed)
        assert await collect(events) == []
        assert (await service.load(thread_id)).awaiting_reply


async def until_running(service: ConversationService, thread_id: str) -> None:
    """Return on the first loop turn the run is registered (before its task has taken a step): the earliest Stop."""
    for _ in range(10_000):
        if service.is_running(thread_id):
            return
        await asyncio.sleep(0)  # one loop turn, not a delay: the condition decides
    raise AssertionError("the run never started")


async def test_stop_right_after_send_keeps_the_question(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    thread_id = service.new_thread_id()
    await talk(service, thread_id, "earlier")
    events = service.send(thread_id, "never mind")
    first = asyncio.ensure_future(anext(events))
    await until_running(service, thread_id)
    assert service.stop(thread_id)

    async with asyncio.timeout(PROMPT):  # it used to wait for an event that never came
        failed = await first
        assert await collect(events) == []
    assert isinstance(failed, ReplyFailed) and failed.kind == "stopped"
    assert not service.is_running(thread_id)

    service = await reopen(service)
    view = await service.load(thread_id)
    assert [(m.role, m.text) for m in view.messages] == [
        ("user", "earlier"),
        ("assistant", "Echo: earlier"),
        ("user", "never mind"),
    ]
    assert view.awaiting_reply
    assert only_done(await collect(service.retry(thread_id))).text == "Echo: never mind"


async def test_delete_right_after_send(service: ConversationService, server: ModelServer, reopen: Reopen) -> None:
    thread_id = service.new_thread_id()
    events = service.send(thread_id, "oops, wrong conversation")
    first = asyncio.ensure_future(anext(events))
    await until_running(service, thread_id)

    async with asyncio.timeout(PROMPT):
        await service.delete(thread_id)
        assert isinstance(await first, ReplyFailed)
        assert await collect(events) == []

    assert await service.conversations() == []
    service = await reopen(service)
    assert await service.conversations() == []
    assert (await service.load(thread_id)).messages == []


class StopTwice(ConversationService):
    """Presses Stop again while the first Stop is storing the partial reply (a double click)."""

    second_stop: bool | None = None

    async def _keep_partial(self, thread_id: str, partial: str, at: Any = None, reasoning: str = "") -> ChatEvent:
        self.second_stop = self.stop(thread_id)
        return await super()._keep_partial(thread_id, partial, at, reasoning)


async def test_a_second_stop_does_not_lose_the_partial_reply(
    open_storage: Any, tmp_path: Path, server: ModelServer, reopen: Reopen
) -> None:
    storage = await open_storage(tmp_path)
    service = StopTwice(storage, Endpoint(server.base_url, MODEL, **LIMITS))
    server.reply = "one two three four"
    server.pause(after_tokens=2)
    thread_id = service.new_thread_id()

    events: list[ChatEvent] = []
    async for event in service.send(thread_id, "stop me twice"):  # must not raise CancelledError
        events.append(event)
        if len(events) == 2:
            await server.wait_for_paused_async()
            service.stop(thread_id)
    server.resume()

    assert service.second_stop is True
    done = only_done(events)
    assert done.stopped and done.text == "one two "
    service = await reopen(service)
    assert await pairs(service, thread_id) == [("user", "stop me twice"), ("assistant", "one two ")]


# --- regenerate and edit ----------------------------------------------------------------------------------------


async def test_regenerate_answers_again_on_a_new_branch(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    server.reply = CountingReply()
    thread_id = service.new_thread_id()
    await talk(service, thread_id, "first question")
    await talk(service, thread_id, "second question")

    events = await collect(service.regenerate(thread_id))

    done = only_done(events)
    assert done.text == "Answer 3 to second question"
    assert "".join(tokens_of(events)) == done.text
    # The model saw the conversation up to the question, not the reply being replaced.
    assert [m["content"] for m in server.chat_requests[-1].messages] == [
        "first question",
        "Answer 1 to first question",
        "second question",
    ]
    latest = [
        ("user", "first question"),
        ("assistant", "Answer 1 to first question"),
        ("user", "second question"),
        ("assistant", "Answer 3 to second question"),
    ]
    assert await pairs(service, thread_id) == latest

    service = await reopen(service)
    assert await pairs(service, thread_id) == latest
    tails = await history_tails(service, thread_id)
    old_branch = ["first question", "Answer 1 to first question", "second question", "Answer 2 to second question"]
    assert old_branch in tails

    again = only_done(await collect(service.regenerate(thread_id)))
    assert again.text == "Answer 4 to second question"
    assert (await pairs(service, thread_id))[-1] == ("assistant", "Answer 4 to second question")
    tails = await history_tails(service, thread_id)
    assert old_branch in tails
    assert [*old_branch[:3], "Answer 3 to second question"] in tails


async def test_regenerate_without_a_question_is_refused(service: ConversationService) -> None:
    with pytest.raises(LookupError, match="no message"):
        await collect(service.regenerate(service.new_thread_id()))


async def three_turns(service: ConversationService, thread_id: str) -> list[str]:
    for question in ("question one", "question two", "question three"):
        await talk(service, thread_id, question)
    return [m.id for m in (await service.load(thread_id)).messages]


async def test_edit_and_resend_the_first_message(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    server.reply = CountingReply()
    thread_id = service.new_thread_id()
    ids = await three_turns(service, thread_id)
    before = [text for _, text in await pairs(service, thread_id)]

    done = only_done(await collect(service.edit_and_resend(thread_id, ids[0], "question one, edited")))

    assert done.text == "Answer 4 to question one, edited"
    assert [m["content"] for m in server.chat_requests[-1].messages] == ["question one, edited"]
    service = await reopen(service)
    assert await pairs(service, thread_id) == [
        ("user", "question one, edited"),
        ("assistant", "Answer 4 to question one, edited"),
    ]
    assert before in await history_tails(service, thread_id)


async def test_edit_and_resend_a_middle_message(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    server.reply = CountingReply()
    thread_id = service.new_thread_id()
    ids = await three_turns(service, thread_id)
    before = [text for _, text in await pairs(service, thread_id)]

    done = only_done(await collect(service.edit_and_resend(thread_id, ids[2], "question two, edited")))

    assert done.text == "Answer 4 to question two, edited"
    prefix = [("user", "question one"), ("assistant", "Answer 1 to question one")]
    edited = [*prefix, ("user", "question two, edited"), ("assistant", "Answer 4 to question two, edited")]
    assert [(m["role"], m["content"]) for m in server.chat_requests[-1].messages] == edited[:3]
    assert await pairs(service, thread_id) == edited

    service = await reopen(service)
    assert await pairs(service, thread_id) == edited
    assert before in await history_tails(service, thread_id)

    # The new branch is a conversation like any other: its own messages can be edited again.
    new_ids = [m.id for m in (await service.load(thread_id)).messages]
    only_done(await collect(service.edit_and_resend(thread_id, new_ids[2], "question two, edited twice")))
    assert await pairs(service, thread_id) == [
        *prefix,
        ("user", "question two, edited twice"),
        ("assistant", "Answer 5 to question two, edited twice"),
    ]
    # ...and a message of the old branch is no longer on the current one.
    with pytest.raises(LookupError):
        await collect(service.edit_and_resend(thread_id, ids[4], "from the old branch"))


async def test_a_lone_surrogate_in_a_pasted_message_is_dropped_and_the_reply_comes(
    service: ConversationService, server: ModelServer
) -> None:
    # Half of an emoji, a zero-width-joiner sequence, and an emoji as two surrogates (which are joined).
    pasted = "half \ud83d a smile, a coder \U0001f469\u200d\U0001f4bb and a pair \ud83d\ude00"
    clean = "half  a smile, a coder \U0001f469\u200d\U0001f4bb and a pair \U0001f600"
    thread_id = service.new_thread_id()

    done = await talk(service, thread_id, pasted)

    assert done.text == f"Echo: {clean}"
    assert await pairs(service, thread_id) == [("user", clean), ("assistant", f"Echo: {clean}")]
    assert [m["content"] for m in server.chat_requests[-1].messages] == [clean]

    # An edit pasted the same way is cleaned too.
    first = (await service.load(thread_id)).messages[0].id
    only_done(await collect(service.edit_and_resend(thread_id, first, "again \udc00!")))
    assert await pairs(service, thread_id) == [("user", "again !"), ("assistant", "Echo: again !")]


async def test_only_user_messages_of_this_conversation_can_be_edited(service: ConversationService) -> None:
    thread_id = service.new_thread_id()
    await talk(service, thread_id, "hello")
    reply_id = (await service.load(thread_id)).messages[1].id

    with pytest.raises(LookupError):
        await collect(service.edit_and_resend(thread_id, reply_id, "not a user message"))
    with pytest.raises(LookupError):
        await collect(service.edit_and_resend(thread_id, "no-such-message", "unknown"))
    assert await pairs(service, thread_id) == [("user", "hello"), ("assistant", "Echo: hello")]


# --- failures and retry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    name: str
    kind: str
    words: tuple[str, ...]
    """Phrases the message must contain, so the user can tell what went wrong."""
    partial_tokens: int = 0


FAILURES = [
    Failure("auth", "auth", ("refused the API key", "HTTP 401", "Settings")),
    Failure("unknown_model", "model", ("model was not found", "HTTP 404", "no-such-model")),
    Failure("server_error", "server", ("model server failed", "HTTP 500")),
    Failure("refused", "network", ("Cannot reach the model server at 127.0.0.1:", "is the server running?")),
    Failure("timeout", "timeout", ("The model server sent nothing for 1 s",)),
    Failure("disconnect", "network", ("closed the connection before the reply was complete",), partial_tokens=2),
    Failure(
        "stream_error",
        "server",
        ("The model server reported an error: Upstream model failed: deployment overloaded",),
        partial_tokens=2,
    ),
]


@pytest.mark.parametrize("failure", FAILURES, ids=[f.name for f in FAILURES])
async def test_a_failed_reply_keeps_the_question_and_retry_answers_it(
    failure: Failure,
    open_storage: Any,
    tmp_path: Path,
    server: ModelServer,
    reopen: Reopen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = Endpoint(server.base_url, MODEL, first_token_timeout=5, token_timeout=5)
    endpoint = good
    if failure.name == "auth":
        server.api_key = "sk-right-key"
        endpoint = Endpoint(server.base_url, MODEL, api_key="sk-wrong-key")
        good = Endpoint(server.base_url, MODEL, api_key="sk-right-key")
    elif failure.name == "server_error":
        server.fail_next(500)
    elif failure.name == "refused":
        endpoint = Endpoint(f"http://127.0.0.1:{closed_port()}/v1", MODEL)
    elif failure.name == "timeout":
        server.hang_next()
        endpoint = good = Endpoint(server.base_url, MODEL, first_token_timeout=1, token_timeout=1)
    elif failure.name == "disconnect":
        server.reply = "one two three four five"
        server.disconnect_next(after_tokens=2)
    elif failure.name == "stream_error":
        server.reply = "one two three four five"
        server.stream_error_next("Upstream model failed: deployment overloaded", after_tokens=2)
    storage = await open_storage(tmp_path)
    service = ConversationService(storage, endpoint)
    thread_id = service.new_thread_id()
    if failure.name == "unknown_model":
        await service.set_model(thread_id, "no-such-model")
    question = f"please answer ({failure.name})"

    events = await collect(service.send(thread_id, question))

    failed = only_failed(events)
    assert failed.kind == failure.kind, failed
    for words in failure.words:
        assert words in failed.message, failed.message
    assert "sk-wrong-key" not in failed.message
    assert "reply failed" not in failed.message  # the words of a bug
    assert not [r for r in caplog.records if r.exc_info], "a failure that is not a bug logged a traceback"
    expected_partial = "".join(tokenize("one two three four five")[: failure.partial_tokens])
    assert "".join(tokens_of(events)) == failed.partial_text == expected_partial
    assert not service.is_running(thread_id)

    # The question is stored (a restart does not lose it) and waits for a reply.
    service = await reopen(service, good)
    view = await service.load(thread_id)
    assert [(m.role, m.text) for m in view.messages] == [("user", question)]
    assert view.awaiting_reply
    if failure.name == "unknown_model":
        await service.set_model(thread_id, MODEL)

    done = only_done(await collect(service.retry(thread_id)))

    reply = server.reply_for([{"role": "user", "content": question}])
    assert done.text == reply
    view = await service.load(thread_id)
    assert [(m.role, m.text) for m in view.messages] == [("user", question), ("assistant", reply)]
    assert not view.awaiting_reply
    sent = server.chat_requests[-1]
    assert [(m["role"], m["content"]) for m in sent.messages] == [("user", question)]  # one copy, also on the wire
    assert sent.model == MODEL


async def test_a_failed_reply_in_a_longer_conversation_retries_once(
    service: ConversationService, server: ModelServer
) -> None:
    thread_id = service.new_thread_id()
    await talk(service, thread_id, "one")
    server.fail_next(503)
    failed = only_failed(await collect(service.send(thread_id, "two")))
    assert failed.kind == "server" and "HTTP 503" in failed.message
    server.fail_next(500)
    assert only_failed(await collect(service.retry(thread_id))).kind == "server"  # failing again is fine too

    only_done(await collect(service.retry(thread_id)))

    assert await pairs(service, thread_id) == [
        ("user", "one"),
        ("assistant", "Echo: one"),
        ("user", "two"),
        ("assistant", "Echo: two"),
    ]
    assert [m["content"] for m in server.chat_requests[-1].messages] == ["one", "Echo: one", "two"]


# --- concurrency ------------------------------------------------------------------------------------------------


async def test_a_second_send_while_streaming_is_refused(service: ConversationService, server: ModelServer) -> None:
    server.pause(after_tokens=1)
    thread_id = service.new_thread_id()
    running = service.send(thread_id, "first")
    assert isinstance(await anext(running), Token)
    await server.wait_for_paused_async()

    with pytest.raises(RuntimeError, match="already streaming in this conversation"):
        await collect(service.send(thread_id, "second"))
    with pytest.raises(RuntimeError, match="already streaming"):
        await collect(service.retry(thread_id))
    with pytest.raises(RuntimeError, match="already streaming"):
        await collect(service.regenerate(thread_id))
    assert service.is_running(thread_id)

    server.resume()
    done = only_done(await collect(running))
    assert done.text == "Echo: first"
    assert await pairs(service, thread_id) == [("user", "first"), ("assistant", "Echo: first")]
    assert len(server.chat_requests) == 1
    # Once the first reply is done, the conversation takes messages again.
    await talk(service, thread_id, "second")
    assert (await pairs(service, thread_id))[-1] == ("assistant", "Echo: second")


async def test_two_conversations_stream_at_once_without_mixing(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    server.token_delay = 0.002  # pacing only; the pause gate below proves both streams are open together
    server.pause()
    first, second = service.new_thread_id(), service.new_thread_id()
    first_text = "alpha " * 12 + "end"
    second_text = "omega " * 12 + "fin"

    runs = [
        asyncio.ensure_future(collect(service.send(first, first_text))),
        asyncio.ensure_future(collect(service.send(second, second_text))),
    ]
    await server.wait_for_paused_async(2)
    assert service.is_running(first) and service.is_running(second)
    server.resume()
    first_events, second_events = await asyncio.gather(*runs)

    assert "".join(tokens_of(first_events)) == only_done(first_events).text == "Echo: " + first_text
    assert "".join(tokens_of(second_events)) == only_done(second_events).text == "Echo: " + second_text
    service = await reopen(service)
    assert await pairs(service, first) == [("user", first_text), ("assistant", "Echo: " + first_text)]
    assert await pairs(service, second) == [("user", second_text), ("assistant", "Echo: " + second_text)]


async def test_stopping_one_conversation_leaves_the_other_streaming(
    service: ConversationService, server: ModelServer
) -> None:
    server.reply = lambda messages: f"{last_user_text(messages)} one two three four"
    stopped, other = service.new_thread_id(), service.new_thread_id()

    server.pause()
    stopped_run = service.send(stopped, "A")
    first = asyncio.ensure_future(anext(stopped_run))
    await server.wait_for_paused_async(1)  # A is held before its first token
    server.pause(after_tokens=2)  # release it; it is held again once it has sent two
    head = [await first, await anext(stopped_run)]
    await server.wait_for_paused_async(1)
    other_run = asyncio.ensure_future(collect(service.send(other, "B")))
    await server.wait_for_paused_async(2)  # B is open too, held before its first token
    assert service.is_running(stopped) and service.is_running(other)

    assert service.stop(stopped)
    server.resume()
    stopped_events = head + await collect(stopped_run)
    other_events = await other_run

    assert tokens_of(stopped_events) == ["A ", "one "]
    assert only_done(stopped_events).stopped
    assert only_done(stopped_events).text == "A one "
    assert not only_done(other_events).stopped
    assert "".join(tokens_of(other_events)) == only_done(other_events).text == "B one two three four"
    assert await pairs(service, stopped) == [("user", "A"), ("assistant", "A one ")]
    assert await pairs(service, other) == [("user", "B"), ("assistant", "B one two three four")]


# --- search, list, rename, pin, delete --------------------------------------------------------------------------


async def test_search_by_title_and_by_message_content(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    server.reply = lambda messages: {
        "Planning a trip to Lisbon": "Pack light.",
        "Recipe for pancakes": "Serve with maple SYRUP and 🦜 sprinkles.",
        "Bring sunscreen?": "Yes.",
        "Old trip to Lisbon": "Nice.",
    }[last_user_text(messages)]
    trip, pancakes, deleted = (service.new_thread_id() for _ in range(3))
    await talk(service, trip, "Planning a trip to Lisbon")
    await talk(service, trip, "Bring sunscreen?")
    await talk(service, pancakes, "Recipe for pancakes")
    await talk(service, deleted, "Old trip to Lisbon")
    await service.delete(deleted)
    renamed = service.new_thread_id()
    server.reply = "Sure."
    await talk(service, renamed, "Something else entirely")
    await service.rename(renamed, "Weekend in Porto")

    async def found(text: str) -> set[str]:
        return {c.thread_id for c in await service.search(text)}

    for _ in range(2):  # before and after a restart
        assert await found("LISBON") == {trip}  # any case; the deleted one is not found
        assert await found("PORTO") == {renamed}  # only in the (renamed) title
        assert await found("pancakes") == {pancakes}
        assert await found("syrup") == {pancakes}  # in the assistant's reply
        assert await found("SunScreen") == {trip}  # in a later user message, not the title
        assert await found("pack LIGHT") == {trip}
        assert await found("🦜") == {pancakes}
        assert await found("  trip ") == {trip}
        assert await found("") == {trip, pancakes, renamed}
        assert await found("nothing like this") == set()
        # Words of the storage format are not words of the conversation.
        for word in ("human", "content", "AIMessage", "model_name", "type", "stop"):
            assert await found(word) == set(), word
        service = await reopen(service)


async def test_rename_pin_and_delete_show_in_the_list(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    a, b, c = (service.new_thread_id() for _ in range(3))
    for thread_id, text in ((a, "first"), (b, "second"), (c, "third")):
        await talk(service, thread_id, text)

    async def listed() -> list[tuple[str, str, bool]]:
        return [(x.thread_id, x.title, x.pinned) for x in await service.conversations()]

    assert await listed() == [(c, "third", False), (b, "second", False), (a, "first", False)]

    await service.set_pinned(a, True)
    await service.rename(b, "  Renamed\tsecond\x00 conversation \n")
    assert await listed() == [(a, "first", True), (c, "third", False), (b, "Renamed second conversation", False)]

    await service.delete(c)
    assert await listed() == [(a, "first", True), (b, "Renamed second conversation", False)]
    assert (await service.load(c)).messages == []

    service = await reopen(service)
    assert await listed() == [(a, "first", True), (b, "Renamed second conversation", False)]
    assert await service.conversation(c) is None
    assert (await service.load(c)).messages == []
    assert await pairs(service, b) == [("user", "second"), ("assistant", "Echo: second")]

    await service.set_pinned(a, False)
    await talk(service, a, "newest activity")
    assert await listed() == [(a, "first", False), (b, "Renamed second conversation", False)]


async def test_delete_while_streaming_leaves_nothing_behind(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    server.reply = "one two three four"
    server.pause(after_tokens=2)
    thread_id = service.new_thread_id()
    events: list[ChatEvent] = []

    async for event in service.send(thread_id, "delete me mid-reply"):
        events.append(event)
        if len(events) == 2:
            await server.wait_for_paused_async()
            await service.delete(thread_id)
    server.resume()

    assert not service.is_running(thread_id)
    assert tokens_of(events) == ["one ", "two "]
    service = await reopen(service)
    assert await service.conversations() == []
    assert (await service.load(thread_id)).messages == []
    assert [c async for c in service.saver.alist({"configurable": {"thread_id": thread_id}})] == []


# --- export -----------------------------------------------------------------------------------------------------


async def test_exports_hold_every_message_in_order_with_any_text(
    service: ConversationService, server: ModelServer, reopen: Reopen
) -> None:
    texts = [
        "Emoji 👩‍💻🦜 and flags 🇵🇹",
        "עברית: שלום עולם, and العربية: مرحبا بالعالم",
        "A NUL \x00 inside, and a bell \x07",
        "Markdown **stays** `as typed`\n\n# even headings",
    ]
    thread_id = service.new_thread_id()
    for text in texts:
        await talk(service, thread_id, text)
    expected = [msg for text in texts for msg in (("user", text), ("assistant", "Echo: " + text))]
    assert await pairs(service, thread_id) == expected  # the model round trip kept every character

    service = await reopen(service)
    data = json.loads(await service.export_json(thread_id))
    assert data["thread_id"] == thread_id
    assert data["title"] == "Emoji 👩‍💻🦜 and flags 🇵🇹"
    assert data["model"] == ""
    assert data["created"]
    assert [(m["role"], m["content"]) for m in data["messages"]] == expected
    assert all("stopped" not in m for m in data["messages"])
    assert len({m["id"] for m in data["messages"]}) == len(expected)

    markdown = await service.export_markdown(thread_id)
    assert markdown.startswith("# Emoji 👩‍💻🦜 and flags 🇵🇹\n")
    position = 0
    for role, text in expected:
        label = "**You**:" if role == "user" else "**Assistant**:"
        label_at = markdown.index(label, position)
        text_at = markdown.index(text, label_at)
        assert text_at == label_at + len(label) + 2  # the label, a blank line, then the text verbatim
        position = text_at + len(text)
    assert markdown.count("**You**:") == len(texts)
    assert markdown.count("**Assistant**:") == len(texts)


async def test_with_no_model_each_send_asks_the_server_again_for_its_first(
    open_storage: Any, tmp_path: Path, server: ModelServer
) -> None:
    # Nothing listens at the address at first (the proxy refuses as a closed port does); then the server is there.
    server.models = ["zeta-main", "alpha-other"]
    with TcpProxy("127.0.0.1", server.port) as proxy:
        proxy.refuse()
        base_url = f"http://127.0.0.1:{proxy.port}/v1"
        service = ConversationService(await open_storage(tmp_path), Endpoint(base_url, "", **LIMITS))
        thread_id = service.new_thread_id()

        failed = only_failed(await collect(service.send(thread_id, "hello?")))
        assert failed.kind == "network"
        assert failed.message.startswith(
            f"Cannot reach the model server at 127.0.0.1:{proxy.port} — is the server running? ("
        ), failed.message
        assert (await service.load(thread_id)).awaiting_reply  # the question is kept for the Retry

        proxy.pass_through()
        done = only_done(await collect(service.retry(thread_id)))
        assert done.text == "Echo: hello?"
        assert server.chat_requests[-1].model == "zeta-main"
        assert service.endpoint.model == "zeta-main"
