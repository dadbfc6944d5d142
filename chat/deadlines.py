"""Limits on a model's silence: a generous one for the first word of a reply, a shorter one between words.

A local server may load the model before it says anything (minutes for a large one), while a server that stops in
the middle of a reply is stuck: one HTTP read timeout cannot tell the two apart, and a role announcement sent at
once would end the "first word" wait too early. So the words themselves are watched (each streamed chunk reaches
the model's callbacks) and the call is cancelled, which closes its HTTP stream, once the limit in force passes.

A chunk without text counts too, unless it is the stream's first (the role announcement, which servers send before
loading the model): a reasoning model streams its thinking in fields langchain-openai drops, as empty chunks, for
minutes before the answer, and it is at work all that time.

``asyncio.wait`` keeps the time, not ``asyncio.wait_for``: on Python 3.11 the latter can swallow the cancellation
of a Stop (CPython gh-86296).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk

from chat.endpoints import ModelSilent

T = TypeVar("T")


class WordWatch(AsyncCallbackHandler):
    """Notes when the last word came (None until the first one); ``first`` is set by the first."""

    def __init__(self) -> None:
        super().__init__()
        self.last: float | None = None
        self.first = asyncio.Event()
        self.chunks = 0

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.chunks += 1
        if token or self.chunks > 1 or _carries_more_than_a_role(chunk):
            self.last = time.monotonic()
            self.first.set()


def _carries_more_than_a_role(chunk: Any) -> bool:
    """A first chunk without text that still says the model is at work: a tool call, or reasoning kept in the
    message's extra fields."""
    message = getattr(chunk, "message", None)
    if message is None:
        return False
    extra = getattr(message, "additional_kwargs", None) or {}
    return bool(getattr(message, "tool_call_chunks", None)) or any(
        extra.get(key) for key in ("reasoning_content", "reasoning", "tool_calls", "function_call")
    )


async def within_limits(
    call: Callable[[WordWatch], Awaitable[T]], first_word: float | None, between_words: float | None
) -> T:
    """``await call(watch)`` (which must pass ``watch`` to the model's callbacks), cancelled with ``ModelSilent`` once
    no word came for ``first_word`` seconds from the start, or for ``between_words`` seconds after a word.
    None: no limit."""
    watch = WordWatch()
    started = time.monotonic()
    task: asyncio.Future[T] = asyncio.ensure_future(call(watch))
    # Woken by the first word too: from then on the (shorter) limit between words is in force. Later words only
    # move the deadline further, so waking at the deadline in force and looking again is enough.
    first = asyncio.ensure_future(watch.first.wait())
    try:
        while True:
            if watch.last is None:
                limit, since = first_word, started
            else:
                limit, since = between_words, watch.last
            left = None if limit is None else since + limit - time.monotonic()
            if left is not None and left <= 0:
                raise ModelSilent(limit or 0.0, flowing=watch.last is not None)
            waits: list[asyncio.Future[Any]] = [task] if first.done() else [task, first]
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
    finally:
        first.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])  # the HTTP stream is closed before the failure is told
        if not task.cancelled():
            task.exception()  # retrieved: the failure told is ours (or the caller's cancellation)
