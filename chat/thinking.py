"""A thinking model's reasoning, kept apart from its answer.

Servers send it two ways: as ``delta.reasoning_content`` beside ``delta.content`` (DeepSeek's API, vLLM, LM Studio,
Ollama's OpenAI endpoint; langchain-openai drops that field, see chat/endpoints.py), or inline at the start of the
text as ``<think>...</think>`` (Qwen3, DeepSeek-R1 through servers that do not parse it). Either way Cairn stores it
in the reply's ``additional_kwargs["reasoning_content"]``, never in its content: the history sent with the next
question holds only the answers, and langchain-openai does not send that key back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from langchain_core.messages import AIMessage, BaseMessage

REASONING = "reasoning_content"
OPEN, CLOSE = "<think>", "</think>"

Part = tuple[Literal["reasoning", "answer"], str]


def reasoning_of(message: BaseMessage) -> str:
    value = message.additional_kwargs.get(REASONING)
    return value if isinstance(value, str) else ""


def split_inline(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a complete reply that may open with ``<think>...</think>``."""
    splitter = InlineThinking()
    parts = [*splitter.feed(text), *splitter.end()]
    return (
        "".join(t for kind, t in parts if kind == "reasoning"),
        "".join(t for kind, t in parts if kind == "answer"),
    )


def separated(message: AIMessage) -> AIMessage:
    """The reply with inline ``<think>`` reasoning moved out of its content (same id: it is the same message)."""
    if not isinstance(message.content, str) or OPEN not in message.content:
        return message
    reasoning, answer = split_inline(message.content)
    if not reasoning:
        return message
    joined = reasoning_of(message) + reasoning
    return message.model_copy(
        update={"content": answer.lstrip(), "additional_kwargs": {**message.additional_kwargs, REASONING: joined}}
    )


class InlineThinking:
    """Splits streamed text into reasoning and answer parts: a ``<think>`` block is reasoning only where it opens the
    reply (after whitespace), so a reply that talks about the tag keeps it. Tags split across chunks are held back
    until it is clear what they are."""

    def __init__(self) -> None:
        self._state: Literal["start", "thinking", "answer"] = "start"
        self._held = ""

    def feed(self, text: str) -> Iterator[Part]:
        self._held += text
        while self._held:
            if self._state == "answer":
                yield "answer", self._held
                self._held = ""
            elif self._state == "start":
                stripped = self._held.lstrip()
                if not stripped:
                    return  # only whitespace so far: wait for what follows
                if stripped.startswith(OPEN):
                    self._held = stripped[len(OPEN) :]
                    self._state = "thinking"
                elif OPEN.startswith(stripped):
                    return  # "<th": may still become the tag
                else:
                    self._state = "answer"
            else:
                end = self._held.find(CLOSE)
                if end >= 0:
                    if end:
                        yield "reasoning", self._held[:end]
                    self._held = self._held[end + len(CLOSE) :].lstrip()
                    self._state = "answer"
                    continue
                keep = _partial_suffix(self._held, CLOSE)
                if len(self._held) > keep:
                    yield "reasoning", self._held[: len(self._held) - keep]
                    self._held = self._held[len(self._held) - keep :]
                return

    def end(self) -> Iterator[Part]:
        """The stream ended: what was held back is what it looked like."""
        held, self._held = self._held, ""
        if held:
            yield ("reasoning" if self._state == "thinking" else "answer"), held


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
