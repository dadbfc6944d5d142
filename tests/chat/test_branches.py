"""Branches you can walk (chat/service.py: ``ConversationView.versions``, ``show_version``): after an edit or a
regenerate, each message with other versions says which one it is and how to show the others, in the order they
were made; choosing one is stored with the conversation (it opens there after a restart). Real SQLite storage, the
real graph, a real HTTP model server."""

from __future__ import annotations

import time
from typing import Any

import pytest

from chat.service import ConversationService, ConversationView
from tests.support.chat import CountingReply, Reopen, collect, only_done, talk


def texts(view: ConversationView) -> list[str]:
    return [m.text for m in view.messages]


async def test_regenerated_replies_are_versions_of_one_message(
    service: ConversationService, server: Any, reopen: Reopen
) -> None:
    server.reply = CountingReply()
    thread = service.new_thread_id()
    await talk(service, thread, "question")
    view = await service.load(thread)
    assert view.versions == {}  # one branch: nothing to walk
    for _ in range(2):
        only_done(await collect(service.regenerate(thread)))

    view = await service.load(thread)
    reply = view.messages[-1]
    assert reply.text == "Answer 3 to question"
    versions = view.versions[reply.id]
    assert (versions.index, versions.count) == (3, 3)
    assert list(view.versions) == [reply.id]  # the question itself has one version

    first = await service.load(thread, versions.checkpoints[0])
    assert texts(first) == ["question", "Answer 1 to question"]
    assert first.versions[first.messages[-1].id].index == 1
    second = await service.load(thread, versions.checkpoints[1])
    assert texts(second)[-1] == "Answer 2 to question"
    assert second.versions[second.messages[-1].id].checkpoints == versions.checkpoints

    # Choosing a version is stored with the conversation: it opens there, also after a restart.
    chosen = await service.show_version(thread, versions.checkpoints[0])
    assert texts(await service.load(thread)) == ["question", "Answer 1 to question"]
    assert (await service.load(thread)).checkpoint_id == chosen
    service = await reopen(service)
    reopened = await service.load(thread)
    assert texts(reopened) == ["question", "Answer 1 to question"]
    assert reopened.versions[reopened.messages[-1].id].index == 1
    assert reopened.versions[reopened.messages[-1].id].count == 3

    # The conversation goes on from the version chosen, and the versions stay walkable.
    await talk(service, thread, "and then?")
    after = await service.load(thread)
    assert texts(after) == ["question", "Answer 1 to question", "and then?", "Answer 4 to and then?"]
    assert after.versions[after.messages[1].id].index == 1


async def test_an_edited_message_walks_back_to_the_original_and_what_followed(
    service: ConversationService, server: Any
) -> None:
    server.reply = CountingReply()
    thread = service.new_thread_id()
    for text in ("one", "two", "three"):
        await talk(service, thread, text)
    original = await service.load(thread)
    two = original.messages[2]
    only_done(await collect(service.edit_and_resend(thread, two.id, "two, edited")))

    edited = await service.load(thread)
    assert texts(edited) == ["one", "Answer 1 to one", "two, edited", "Answer 4 to two, edited"]
    versions = edited.versions[edited.messages[2].id]
    assert (versions.index, versions.count) == (2, 2)
    assert edited.messages[0].id not in edited.versions  # before the edit: one version

    back = await service.load(thread, versions.checkpoints[0])
    assert texts(back) == texts(original)  # the original and everything after it
    assert back.versions[two.id].index == 1


async def test_messages_carry_the_time_they_were_made(service: ConversationService) -> None:
    before = time.time()
    thread = service.new_thread_id()
    await talk(service, thread, "when?")
    after = time.time()
    for message in (await service.load(thread)).messages:
        assert message.created is not None and before - 1 <= message.created <= after + 1


async def test_showing_a_checkpoint_of_another_conversation_is_refused(service: ConversationService) -> None:
    thread = service.new_thread_id()
    await talk(service, thread, "hello")
    other = service.new_thread_id()
    await talk(service, other, "hello")
    foreign = (await service.load(other)).checkpoint_id
    with pytest.raises(LookupError):
        await service.show_version(thread, foreign)
