"""The conversation service in tests: a real model server, the service on real storage, and helpers to read what a
run produced. The fixtures (``server``, ``service``, ``reopen``) are in tests/chat/conftest.py."""

from __future__ import annotations

import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from chat.events import ChatEvent, ReplyDone, ReplyFailed, Token
from chat.service import ConversationService
from tests.support.model_server import last_user_text

MODEL = "test-model"
CLIENT_TIMEOUT = 30.0
"""The model client's timeout in these tests: long enough never to fire by itself, so a stalled run fails the test."""
LIMITS = {"first_token_timeout": CLIENT_TIMEOUT, "token_timeout": CLIENT_TIMEOUT}
PROMPT = 5.0
"""How long a Stop may take to end a run, at most (it should take milliseconds)."""
Reopen = Callable[..., Awaitable[ConversationService]]


# --- fixtures and helpers ---------------------------------------------------------------------------------------


async def collect(events: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    return [event async for event in events]


def tokens_of(events: list[ChatEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Token)]


def only_done(events: list[ChatEvent]) -> ReplyDone:
    """The run ended with a ReplyDone, preceded by tokens only."""
    assert events, "the run produced no event"
    *head, last = events
    assert isinstance(last, ReplyDone), f"expected ReplyDone, got {last!r}"
    assert all(isinstance(e, Token) for e in head), events
    return last


def only_failed(events: list[ChatEvent]) -> ReplyFailed:
    assert events, "the run produced no event"
    *head, last = events
    assert isinstance(last, ReplyFailed), f"expected ReplyFailed, got {last!r}"
    assert all(isinstance(e, Token) for e in head), events
    return last


async def pairs(service: ConversationService, thread_id: str) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in (await service.load(thread_id)).messages]


async def talk(service: ConversationService, thread_id: str, text: str) -> ReplyDone:
    return only_done(await collect(service.send(thread_id, text)))


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released, so the kernel refuses connections to it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingReply:
    """A server reply that differs on every call: "Answer N to <question>"."""

    def __init__(self) -> None:
        self.counter = itertools.count(1)

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        return f"Answer {next(self.counter)} to {last_user_text(messages)}"


async def history_tails(service: ConversationService, thread_id: str) -> list[list[str]]:
    """The message texts of every state in the thread's history (all branches)."""
    config = {"configurable": {"thread_id": thread_id}}
    return [
        [str(m.content) for m in snapshot.values.get("messages", [])]
        async for snapshot in service.graph.aget_state_history(config)
    ]
