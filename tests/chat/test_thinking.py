"""Thinking models and token counts, end to end: a real HTTP model server streaming ``reasoning_content`` (or a
reply that opens with ``<think>``), the real graph and service, real SQLite. The reasoning streams apart from the
answer, is stored with the reply and exported, and is never sent back to the model; the server's token counts are
asked for, stored with each reply and added up for the conversation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.events import ReplyDone, Thinking, Token
from chat.service import ConversationService
from chat.thinking import InlineThinking, split_inline
from tests.support.chat import Reopen, collect, only_done


def streamed(events: list[Any], kind: type) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


async def test_reasoning_content_streams_apart_and_is_stored_with_the_reply(
    service: ConversationService, server: Any, reopen: Reopen
) -> None:
    server.reasoning = "Let me think about it carefully."
    server.reply = "The answer is 42."
    thread = service.new_thread_id()

    events = await collect(service.send(thread, "what is it?"))

    assert streamed(events, Thinking) == "Let me think about it carefully."
    assert streamed(events, Token) == "The answer is 42."
    assert isinstance(events[-1], ReplyDone) and events[-1].text == "The answer is 42."
    first_answer = next(i for i, e in enumerate(events) if isinstance(e, Token))
    assert all(not isinstance(e, Thinking) for e in events[first_answer:])  # the thinking came first

    service = await reopen(service)
    reply = (await service.load(thread)).messages[-1]
    assert (reply.text, reply.reasoning) == ("The answer is 42.", "Let me think about it carefully.")
    assert reply.thinking_seconds is not None and reply.thinking_seconds >= 0

    server.reasoning = ""
    only_done(await collect(service.send(thread, "and next?")))
    sent = server.chat_requests[-1].messages
    assert [m.get("content") for m in sent] == ["what is it?", "The answer is 42.", "and next?"]
    assert "reasoning_content" not in json.dumps(sent) and "carefully" not in json.dumps(sent)

    markdown = await service.export_markdown(thread)
    assert "Let me think about it carefully." in markdown and "<summary>Thinking</summary>" in markdown
    exported = json.loads(await service.export_json(thread))
    assert exported["messages"][1]["reasoning"] == "Let me think about it carefully."


async def test_an_inline_think_block_is_reasoning_not_answer(service: ConversationService, server: Any) -> None:
    server.reply = ["<thi", "nk>Hmm, ", "two plus ", "two.</th", "ink>\n\n", "It is ", "four."]
    thread = service.new_thread_id()

    events = await collect(service.send(thread, "2+2?"))

    assert streamed(events, Thinking) == "Hmm, two plus two."
    assert streamed(events, Token) == "It is four."
    reply = (await service.load(thread)).messages[-1]
    assert (reply.text, reply.reasoning) == ("It is four.", "Hmm, two plus two.")
    server.reply = "You are welcome."
    only_done(await collect(service.send(thread, "thanks")))
    assert "<think>" not in json.dumps(server.chat_requests[-1].messages)


async def test_token_counts_are_asked_for_stored_and_added_up(
    service: ConversationService, server: Any, reopen: Reopen
) -> None:
    thread = service.new_thread_id()
    only_done(await collect(service.send(thread, "count these words")))
    only_done(await collect(service.send(thread, "and these")))
    request = server.chat_requests[-1].body
    assert request.get("stream_options", {}).get("include_usage") is True

    service = await reopen(service)
    view = await service.load(thread)
    replies = [m for m in view.messages if m.role == "assistant"]
    assert all(m.usage is not None and m.usage.output_tokens > 0 for m in replies)
    assert replies[0].usage is not None and replies[0].usage.output_tokens == 4  # "Echo: count these words"
    assert view.usage is not None
    assert view.usage.output_tokens == sum(m.usage.output_tokens for m in replies if m.usage)
    assert view.usage.input_tokens == sum(m.usage.input_tokens for m in replies if m.usage)


@pytest.mark.parametrize(
    ("pieces", "reasoning", "answer"),
    [
        (["<think>a</think>b"], "a", "b"),
        (["  <think>", "a", "</think>", " b"], "a", "b"),
        (["plain ", "text"], "", "plain text"),
        (["talking about <think> tags"], "", "talking about <think> tags"),
        (["<", "t", "h", "i", "n", "k", ">", "x", "<", "/think", ">", "y"], "x", "y"),
        (["<think>never closed"], "never closed", ""),
        (["<thin"], "", "<thin"),
    ],
)
def test_inline_thinking_split_across_any_chunks(pieces: list[str], reasoning: str, answer: str) -> None:
    splitter = InlineThinking()
    parts = [part for piece in pieces for part in splitter.feed(piece)] + list(splitter.end())
    assert "".join(t for k, t in parts if k == "reasoning") == reasoning
    assert "".join(t for k, t in parts if k == "answer").strip() == answer
    assert split_inline("".join(pieces))[0] == reasoning
