"""A Postgres replaced by an empty one at the same URL (a new server, a restore from an old backup) heals.

Everything local reaches it again within seconds of it answering: checkpoints, writes, and the conversation index
with its titles, pins and tombstones; and a conversation deleted here does not come back from a second client that
still had it. Postgres is checked with plain connections, never through the code under test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support.chatgraph import build_graph, messages, turn
from tests.support.netproxy import TcpProxy
from tests.support.sync import SYNC_TIMEOUT, pg_checkpoint_keys, pg_fetch, pg_write_keys, until_synced
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

WAIT = 15.0


async def replace_with_empty(pg_cluster: Any, pg_url: str) -> None:
    """Drop the database (ending its sessions) and create an empty one of the same name: the same URL answers."""
    name = psycopg.conninfo.conninfo_to_dict(pg_url)["dbname"]

    def run() -> None:
        pg_cluster.drop_database(pg_url)
        with psycopg.connect(pg_cluster._admin_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    await asyncio.to_thread(run)


async def index_rows(url: str) -> dict[str, tuple[str, bool, bool]]:
    rows = await pg_fetch(url, "SELECT thread_id, title, pinned, deleted FROM cairn_conversations")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_an_empty_server_at_the_same_url_gets_everything_back(
    pg_cluster: Any, pg_url: str, open_storage: Any, tmp_path: Path
) -> None:
    proxy_b = TcpProxy(pg_cluster.host, pg_cluster.port)
    try:
        a = await open_storage(tmp_path / "a", pg_url)
        b = await open_storage(tmp_path / "b", proxy_b.url_for(pg_url))
        graph_a = build_graph(a.saver)
        for thread_id in ("kept", "pinned", "doomed"):
            await turn(graph_a, thread_id, f"{thread_id} says hello")
            await a.manager.update_conversation(thread_id, title=f"Title of {thread_id}")
        await a.manager.update_conversation("pinned", pinned=True)
        await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
        await eventually(lambda: b.manager.sqlite is not None, WAIT)

        async def b_has_doomed() -> bool:
            assert b.manager.sqlite is not None
            return bool(await b.manager.sqlite.checkpoint_keys("doomed"))

        await eventually(b_has_doomed, WAIT, "B has the conversation A will delete")

        # B goes away still holding "doomed"; A deletes it; then the server is replaced by an empty one.
        proxy_b.refuse()
        await a.saver.adelete_thread("doomed")
        await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
        await replace_with_empty(pg_cluster, pg_url)

        # Within seconds of the empty server answering, it holds everything A has, index rows included.
        def healed_index(rows: dict[str, tuple[str, bool, bool]]) -> bool:
            return (
                rows.get("kept") == ("Title of kept", False, False)
                and rows.get("pinned") == ("Title of pinned", True, False)
                and rows.get("doomed", ("", False, False))[2] is True
            )

        async def healed() -> bool:
            try:
                rows = await index_rows(pg_url)
                keys = await pg_checkpoint_keys(pg_url)
                writes = await pg_write_keys(pg_url)
            except psycopg.Error:
                return False  # the tables are not there yet
            assert a.manager.sqlite is not None
            return (
                healed_index(rows)
                and keys == await a.manager.sqlite.checkpoint_keys()
                and writes == await a.manager.sqlite.write_keys()
            )

        await eventually(healed, SYNC_TIMEOUT, "the empty server healed")
        assert a.manager.status().pending_sync == 0

        # B comes back with its copy of "doomed": it does not return; B drops its copy.
        proxy_b.pass_through()
        b.manager.retry_now()
        await until_synced(b.manager, pg_url, WAIT)
        await b.manager.sync_now()
        await a.manager.sync_now()
        assert not await pg_checkpoint_keys(pg_url, "doomed")
        for storage in (a, b):
            listed = {c.thread_id: c for c in await storage.manager.conversations()}
            assert "doomed" not in listed
            assert listed["pinned"].pinned and listed["kept"].title == "Title of kept"
        assert b.manager.sqlite is not None and not await b.manager.sqlite.checkpoint_keys("doomed")
        assert healed_index(await index_rows(pg_url))
        assert (await messages(build_graph(b.saver), "kept"))[0].content == "kept says hello"
    finally:
        proxy_b.close()


async def test_a_server_restored_from_an_old_backup_gets_the_newer_titles(
    pg_url: str, open_storage: Any, tmp_path: Path
) -> None:
    a = await open_storage(tmp_path / "a", pg_url)
    await turn(build_graph(a.saver), "t", "hello")
    await a.manager.update_conversation("t", title="Newest title")
    await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
    # The server goes back in time: its row holds an older title (and an older change stamp).
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute("UPDATE cairn_conversations SET title = 'Old title', meta_changed = meta_changed - 100")
    await a.manager.sync_now()
    assert (await index_rows(pg_url))["t"][0] == "Newest title"


async def test_the_pending_count_counts_conversation_changes_and_says_so(
    pg_cluster: Any, pg_url: str, open_storage: Any, tmp_path: Path
) -> None:
    proxy = TcpProxy(pg_cluster.host, pg_cluster.port)
    try:
        a = await open_storage(tmp_path / "a", proxy.url_for(pg_url))
        await turn(build_graph(a.saver), "t", "hello")
        await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
        proxy.refuse()
        await eventually(lambda: a.manager.status().active_tier == "sqlite", WAIT, "Postgres away")
        await a.manager.update_conversation("t", title="Renamed while away")
        await a.manager.refresh_pending()
        status = a.manager.status()
        assert (status.pending_sync, status.pending_conversations) == (1, 1)
        assert status.pending_words == "1 conversation's title, pin or deletion"
        proxy.pass_through()
        a.manager.retry_now()
        await until_synced(a.manager, pg_url, WAIT)
        assert (await index_rows(pg_url))["t"][0] == "Renamed while away"
    finally:
        proxy.close()
