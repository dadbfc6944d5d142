"""The checkpoint cache answers exactly as the local tier would, and stays right when others write.

Every comparison reads the tier through its own LangGraph saver (``manager.write_target().saver``), which the cache
never touches, and compares it with what the cache answers for the same question.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.types import Command

from chat.state import with_id
from storage.backends import SQLITE_FILE_NAME
from storage.cache import MISS
from storage.manager import StorageManager
from tests.support.chatgraph import REPLY_FILLER as FILLER
from tests.support.chatgraph import Model, build_graph, config, messages, said, scenario_graph, turn
from tests.support.places import unwritable_dir


async def cache_agrees_with_tier(manager: StorageManager, thread_id: str) -> int:
    """Ask the cache and the tier the same questions, for the newest checkpoint and every stored one; the number
    of answers the cache gave (each equal to the tier's)."""
    tier = manager.write_target().saver
    stored = [t async for t in tier.alist(config(thread_id))]
    questions = [config(thread_id), *(t.config for t in stored)]
    answered = 0
    for question in questions:
        cached = manager.cache.get_tuple(question)
        if cached is not MISS:
            assert comparable(cached) == comparable(await tier.aget_tuple(question)), question
            answered += 1
        history = manager.cache.delta_history(question, ["messages"])
        if history is not MISS:
            assert history == await tier.aget_delta_channel_history(config=question, channels=["messages"]), question
            answered += 1
    return answered


def comparable(found: CheckpointTuple | None) -> Any:
    if found is None:
        return None
    return (found.config, found.checkpoint, found.metadata, found.parent_config, found.pending_writes)


async def same_state_as_tier(graph: Any, manager: StorageManager, thread_id: str, model: Model) -> Any:
    shown = await graph.aget_state(config(thread_id))
    plain = await scenario_graph(manager.write_target().saver, model).aget_state(config(thread_id))
    assert shown.values == plain.values
    assert shown.next == plain.next
    assert shown.config == plain.config
    assert [t.interrupts for t in shown.tasks] == [t.interrupts for t in plain.tasks]
    return shown


async def open_tier(open_storage: Any, tier: str, pg_url: str | None) -> Any:
    data_dir = unwritable_dir() if tier == "memory" else Path(tempfile.mkdtemp())
    storage = await open_storage(data_dir, pg_url if tier == "sqlite+postgres" else None)
    assert storage.manager.status().active_tier == ("postgres" if tier == "sqlite+postgres" else tier)
    return storage


@pytest.mark.parametrize("tier", ["sqlite", "memory", "sqlite+postgres"])
async def test_cache_answers_as_the_tier_through_forks_updates_failures_and_interrupts(
    tier: str, open_storage: Any, request: pytest.FixtureRequest
) -> None:
    pg_url = request.getfixturevalue("pg_url") if tier == "sqlite+postgres" else None
    storage = await open_tier(open_storage, tier, pg_url)
    manager = storage.manager
    model = Model()
    graph = scenario_graph(storage.saver, model)
    thread = config("t")

    async def check() -> Any:
        answered = await cache_agrees_with_tier(manager, "t")
        # The memory tier answers some questions differently from SQLite (it rebuilds a checkpoint's values from
        # blobs by version): the cache, which mirrors SQLite, stays out of its way.
        assert answered == 0 if tier == "memory" else answered > 0
        return await same_state_as_tier(graph, manager, "t", model)

    for i in range(7):
        await graph.ainvoke(said(f"question {i}"), thread)
        await check()

    # Edit and resend: a new branch from the input checkpoint of the third question.
    history = [s async for s in graph.aget_state_history(thread)]
    inputs = [s for s in history if s.metadata["source"] == "input"]
    fork = inputs[-3].config  # the input checkpoint of "question 2" (history is newest first)
    await graph.ainvoke(said("question 2, edited"), fork)
    state = await check()
    assert [m.content for m in state.values["messages"]][-2:] == ["question 2, edited", "re: question 2, edited"]
    assert len(state.values["messages"]) == 6

    # A reply kept after Stop, then a message removed.
    await graph.aupdate_state(thread, {"messages": [with_id(AIMessage("kept after stop"))]}, as_node="model")
    state = await check()
    first = state.values["messages"][0]
    await graph.aupdate_state(thread, {"messages": [RemoveMessage(id=first.id)]}, as_node="model")
    state = await check()
    assert first.id not in [m.id for m in state.values["messages"]]

    # A failed model call keeps the user's message; the retry answers it.
    model.fail_next = True
    with pytest.raises(RuntimeError, match="the model is down"):
        await graph.ainvoke(said("question 8"), thread)
    state = await check()
    assert state.next == ("model",)
    await graph.ainvoke(None, thread)
    state = await check()
    assert state.values["messages"][-1].content == "re: question 8"

    # An interrupt, then the answer.
    await graph.ainvoke(said("ask question 9"), thread)
    state = await check()
    assert state.next == ("model",) and state.tasks[0].interrupts
    await graph.ainvoke(Command(resume="yes"), thread)
    state = await check()
    assert state.values["messages"][-1].content == "re: ask question 9 (yes)"
    assert state.values["notes"][-1].startswith("answered")


async def test_a_turn_reads_nothing_back_from_the_tier(open_storage: Any, tmp_path: Path) -> None:
    storage = await open_storage(tmp_path)
    graph = build_graph(storage.saver)
    await turn(graph, "t", "hello")
    await messages(graph, "t")
    cache = storage.manager.cache
    hits, misses = cache.hits, cache.misses
    for i in range(3):
        await turn(graph, "t", f"again {i}")
        assert [m.content for m in await messages(graph, "t")][-2] == f"again {i}"
    assert cache.misses == misses
    assert cache.hits >= hits + 12  # each turn: the graph's load and the read after it, tuple and history


async def test_returned_values_can_be_changed_without_changing_the_conversation(open_storage: Any) -> None:
    storage = await open_storage(Path(tempfile.mkdtemp()))
    model = Model()
    graph = scenario_graph(storage.saver, model)
    await graph.ainvoke(said("one"), config("t"))
    state = await graph.aget_state(config("t"))
    state.values["messages"].append(HumanMessage("not said"))
    state.values["notes"].clear()
    found = await storage.saver.aget_tuple(config("t"))
    assert found is not None
    found.checkpoint["channel_values"].clear()
    found.pending_writes.append(("x", "messages", [HumanMessage("not written")]))
    again = await same_state_as_tier(graph, storage.manager, "t", model)
    assert [m.content for m in again.values["messages"]] == ["one", "re: one"]
    assert again.values["notes"] == ["answered 1"]
    assert await cache_agrees_with_tier(storage.manager, "t") > 0


async def test_another_process_writing_the_same_file_is_seen(open_storage: Any, tmp_path: Path) -> None:
    storage = await open_storage(tmp_path)
    graph = build_graph(storage.saver)
    await turn(graph, "t", "from this window")
    assert [m.content for m in await messages(graph, "t")] == ["from this window", "re: from this window " + FILLER]

    # A second Cairn on the same data folder continues the conversation.
    async with aiosqlite.connect(tmp_path / SQLITE_FILE_NAME) as conn:
        await turn(build_graph(AsyncSqliteSaver(conn)), "t", "from another window")

    shown = [m.content for m in await messages(graph, "t")]
    assert shown[0::2] == ["from this window", "from another window"]
    await turn(graph, "t", "back here")
    assert [m.content for m in await messages(graph, "t")][0::2] == [
        "from this window",
        "from another window",
        "back here",
    ]
    assert await cache_agrees_with_tier(storage.manager, "t") > 0


async def test_a_conversation_continued_elsewhere_is_seen_after_the_sync(
    pg_url: str, open_storage: Any, tmp_path: Path
) -> None:
    a = await open_storage(tmp_path / "a", pg_url)
    b = await open_storage(tmp_path / "b", pg_url)
    graph_a, graph_b = build_graph(a.saver), build_graph(b.saver)
    await turn(graph_a, "shared", "on A")
    assert len(await messages(graph_a, "shared")) == 2  # A holds the thread in its cache now
    await a.manager.sync_now()
    await b.manager.sync_now()
    await turn(graph_b, "shared", "on B")
    await b.manager.sync_now()
    await a.manager.sync_now()  # brings B's turn down into A's SQLite
    assert [m.content for m in await messages(graph_a, "shared")][0::2] == ["on A", "on B"]
    await turn(graph_a, "shared", "on A again")
    assert [m.content for m in await messages(graph_a, "shared")][0::2] == ["on A", "on B", "on A again"]
    assert await cache_agrees_with_tier(a.manager, "shared") > 0


async def test_many_conversations_beyond_the_cache_stay_right(open_storage: Any, tmp_path: Path) -> None:
    storage = await open_storage(tmp_path)
    graph = build_graph(storage.saver)
    threads = [f"t{i}" for i in range(storage.manager.cache.MAX_THREADS * 2)]
    for round_ in range(2):
        for thread_id in threads:
            await turn(graph, thread_id, f"{thread_id} round {round_}")
    for thread_id in threads:
        assert [m.content for m in await messages(graph, thread_id)][0::2] == [
            f"{thread_id} round 0",
            f"{thread_id} round 1",
        ]


async def test_a_write_cancelled_after_it_was_stored_is_not_hidden(open_storage: Any, tmp_path: Path) -> None:
    # Stop pressed while SQLite stores a checkpoint: aiosqlite finishes the statement, the caller sees the cancel.
    storage = await open_storage(tmp_path)
    graph = build_graph(storage.saver)
    await turn(graph, "t", "first")
    assert len(await messages(graph, "t")) == 2  # the cache knows the thread now
    sqlite_saver = storage.manager.sqlite.saver
    stored_then_cancelled = sqlite_saver.aput

    async def aput(*args: Any, **kwargs: Any) -> Any:
        await stored_then_cancelled(*args, **kwargs)
        raise asyncio.CancelledError

    sqlite_saver.aput = aput  # type: ignore[method-assign]
    try:
        with contextlib.suppress(asyncio.CancelledError):  # LangGraph may or may not pass the cancel on
            await turn(graph, "t", "second, stopped at once")
    finally:
        del sqlite_saver.aput
    newest = await sqlite_saver.aget_tuple(config("t"))
    shown = await storage.saver.aget_tuple(config("t"))
    assert shown is not None and newest is not None
    assert shown.checkpoint["id"] == newest.checkpoint["id"]
    assert await cache_agrees_with_tier(storage.manager, "t") > 0
