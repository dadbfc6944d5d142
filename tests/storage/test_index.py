"""The conversation index: reconciled with the checkpointer's threads at start, in the order of their last turns."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from storage import schema
from storage.backends import SQLITE_FILE_NAME, SqliteBackend
from storage.index import read_index
from storage.schema import checkpoint_time
from tests.support.chatgraph import build_graph, messages, turn
from tests.support.places import unwritable_dir


async def test_threads_written_before_cairn_are_listed_at_start(tmp_path: Path, open_storage: Any) -> None:
    # A data dir written by plain LangGraph, before Cairn's tables and triggers existed.
    async with aiosqlite.connect(tmp_path / SQLITE_FILE_NAME) as conn:
        graph = build_graph(AsyncSqliteSaver(conn))
        await turn(graph, "older-thread", "written before Cairn")

    storage = await open_storage(tmp_path)
    listed = [c.thread_id for c in await storage.manager.conversations()]
    assert listed == ["older-thread"]
    assert next(m.content for m in await messages(build_graph(storage.saver), "older-thread")) == "written before Cairn"


async def test_postgres_threads_written_before_cairn_get_index_rows(tmp_path: Path, pg_url: str) -> None:
    async with AsyncPostgresSaver.from_conn_string(pg_url) as saver:
        await saver.setup()
        await turn(build_graph(saver), "remote-older", "written by plain LangGraph")

    from storage.backends import PostgresBackend, PostgresTarget

    backend = await PostgresBackend.open(PostgresTarget(url=pg_url, connect_timeout=2))
    try:
        assert [c.thread_id for c in await backend.conversations()] == ["remote-older"]
    finally:
        await backend.close()


async def newest_checkpoint_time(saver: Any, thread_id: str) -> float:
    found = await saver.aget_tuple({"configurable": {"thread_id": thread_id}})
    made = checkpoint_time(found.checkpoint["id"])
    assert made is not None
    return made


def test_checkpoint_time_reads_the_clock_of_the_machine_that_made_the_id() -> None:
    before = time.time()
    made = checkpoint_time(str(uuid6()))
    assert made is not None and before - 0.01 <= made <= time.time() + 0.01
    assert checkpoint_time(str(uuid.uuid4())) is None
    assert checkpoint_time("not-a-checkpoint-id") is None


@pytest.mark.parametrize("tier", ["sqlite", "memory"])
async def test_updated_is_the_time_of_the_last_turn(tier: str, tmp_path: Path, open_storage: Any) -> None:
    storage = await open_storage(unwritable_dir() if tier == "memory" else tmp_path)
    graph = build_graph(storage.saver)
    await turn(graph, "t", "first")
    await turn(graph, "t", "second")
    (row,) = await storage.manager.conversations()
    assert row.updated == pytest.approx(await newest_checkpoint_time(storage.saver, "t"), abs=1e-3)
    assert row.created < row.updated


async def test_conversations_from_another_machine_keep_their_order(
    pg_url: str, open_storage: Any, tmp_path: Path
) -> None:
    a = await open_storage(tmp_path / "a", pg_url)
    graph_a = build_graph(a.saver)
    # Written in this order on A; their ids sort the other way, so arriving in id order puts them upside down.
    await turn(graph_a, "z-older", "first conversation")
    await turn(graph_a, "a-newer", "second conversation")
    await a.manager.sync_now()
    on_a = {c.thread_id: c for c in await a.manager.conversations()}
    assert list(on_a) == ["a-newer", "z-older"]

    b = await open_storage(tmp_path / "b", pg_url)
    await b.manager.sync_now()
    on_b = {c.thread_id: c for c in await b.manager.conversations()}
    assert list(on_b) == ["a-newer", "z-older"]
    for thread_id, row in on_b.items():
        assert row.updated == pytest.approx(on_a[thread_id].updated, abs=1e-3)
        assert row.created == pytest.approx(on_a[thread_id].created, abs=1e-3)


async def test_a_database_from_before_this_version_gets_the_turn_times(tmp_path: Path) -> None:
    # Migration 0 only: ``updated`` was the time a checkpoint arrived.
    path = tmp_path / SQLITE_FILE_NAME
    async with aiosqlite.connect(path) as conn:
        saver = AsyncSqliteSaver(conn)
        await saver.setup()
        await conn.execute(schema.SQLITE_MIGRATIONS_TABLE)
        await conn.executescript(schema.SQLITE_MIGRATIONS[0])
        await conn.execute("INSERT INTO cairn_migrations (v) VALUES (0)")
        await conn.commit()
        await turn(build_graph(saver), "t", "before the upgrade")
        made = await newest_checkpoint_time(saver, "t")
        await conn.execute("UPDATE cairn_conversations SET updated = updated + 3600")  # "arrived" an hour later
        await conn.commit()

    backend = await SqliteBackend.open(tmp_path)
    try:
        (row,) = await backend.conversations()
        assert row.updated == pytest.approx(made, abs=1e-3)
    finally:
        await backend.close()


async def test_the_list_is_read_from_the_file_before_the_storage_stack(tmp_path: Path, open_storage: Any) -> None:
    assert await read_index(tmp_path) == []  # no file yet
    storage = await open_storage(tmp_path)
    graph = build_graph(storage.saver)
    for thread_id in ("older", "newer", "gone"):
        await turn(graph, thread_id, f"{thread_id} conversation")
    await storage.manager.update_conversation("older", title="Pinned and older", pinned=True)
    await storage.saver.adelete_thread("gone")
    expected = await storage.manager.conversations()
    assert [c.thread_id for c in expected] == ["older", "newer"]
    assert await read_index(tmp_path) == expected  # while the stack has the file open, too
    await storage.close()
    assert await read_index(tmp_path) == expected


async def test_an_unreadable_file_lists_nothing_and_raises_nothing(tmp_path: Path) -> None:
    (tmp_path / SQLITE_FILE_NAME).write_bytes(b"this is not a database" * 100)
    assert await read_index(tmp_path) == []
    assert await read_index(None) == []


@pytest.mark.parametrize("tier", ["sqlite", "memory", "postgres"])
async def test_one_row_read_alone_is_the_row_the_list_has(
    tier: str, tmp_path: Path, open_storage: Any, request: pytest.FixtureRequest
) -> None:
    # Opening a conversation reads its row alone, not the whole list: what it reads must be what the list shows,
    # merged across the tiers, and nothing for a deleted conversation.
    if tier == "postgres":
        storage = await open_storage(tmp_path, request.getfixturevalue("pg_url"))
    else:
        storage = await open_storage(unwritable_dir() if tier == "memory" else tmp_path)
    graph = build_graph(storage.saver)
    for thread_id in ("kept", "renamed", "deleted"):
        await turn(graph, thread_id, f"about {thread_id}")
    await storage.manager.update_conversation("renamed", title="A better title", pinned=True)
    await storage.saver.adelete_thread("deleted")
    if tier == "postgres":
        await storage.manager.sync_now()

    listed = {c.thread_id: c for c in await storage.manager.conversations()}
    assert set(listed) == {"kept", "renamed"}
    for thread_id, row in listed.items():
        assert await storage.manager.conversation(thread_id) == row
    assert (await storage.manager.conversation("renamed")).title == "A better title"  # type: ignore[union-attr]
    assert await storage.manager.conversation("deleted") is None
    assert await storage.manager.conversation("never-written") is None
