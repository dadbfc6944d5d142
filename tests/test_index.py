"""The conversation index is reconciled with the checkpointer's threads at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from storage.backends import SQLITE_FILE_NAME
from tests.chatgraph import build_graph, messages, turn


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
