"""Sync in tests: what Postgres holds (asked directly, not through Cairn), and waiting until a storage stack is
synced."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from storage.status import StorageStatus
from tests.support.chatgraph import build_graph
from tests.support.waiting import eventually

SYNC_TIMEOUT = 5.0
"""How long Postgres may take to hold everything once it answers again (the promise the brief makes)."""
RECOVERY_TIMEOUT = 15.0
"""After a crash or a partition the pool and the health monitor must notice first: allow more."""


# --- helpers: Postgres seen from outside the code under test ---------------------------------------------------


async def pg_fetch(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall()


async def pg_checkpoint_keys(url: str, thread_id: str | None = None) -> set[tuple[Any, ...]]:
    where, params = ("WHERE thread_id = %s", (thread_id,)) if thread_id else ("", ())
    rows = await pg_fetch(url, f"SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints {where}", params)
    return set(rows)


async def pg_write_keys(url: str, thread_id: str | None = None) -> set[tuple[Any, ...]]:
    where, params = ("WHERE thread_id = %s", (thread_id,)) if thread_id else ("", ())
    rows = await pg_fetch(
        url, f"SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM checkpoint_writes {where}", params
    )
    return set(rows)


async def pg_thread_rows(url: str, thread_id: str) -> dict[str, int]:
    """How many rows of each LangGraph table belong to one thread."""
    counts = {}
    for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
        rows = await pg_fetch(url, f"SELECT count(*) FROM {table} WHERE thread_id = %s", (thread_id,))
        counts[table] = rows[0][0]
    return counts


async def pg_row_versions(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every table sync writes, with its physical version (ctid, xmin): an upsert that rewrites a
    row, even with identical values, gives it a new xmin and ctid, so two equal snapshots mean nothing was
    written in between."""
    tables = {
        "checkpoints": "thread_id, checkpoint_ns, checkpoint_id",
        "checkpoint_blobs": "thread_id, checkpoint_ns, channel, version",
        "checkpoint_writes": "thread_id, checkpoint_ns, checkpoint_id, task_id, idx",
        "cairn_conversations": "thread_id",
    }
    snapshot = {}
    for table, key in tables.items():
        rows = await pg_fetch(url, f"SELECT {key}, ctid::text, xmin::text FROM {table}")
        snapshot[table] = set(rows)
    return snapshot


@contextlib.asynccontextmanager
async def plain_postgres_graph(url: str) -> AsyncIterator[Any]:
    """The same chat graph on a plain LangGraph ``AsyncPostgresSaver``: another machine, or a reference reader."""
    async with AsyncPostgresSaver.from_conn_string(url) as saver:
        await saver.setup()
        yield build_graph(saver)


def summary(msgs: list[Any]) -> list[tuple[str, str | None, Any]]:
    return [(m.type, m.id, m.content) for m in msgs]


def state_ids(state: Any) -> tuple[Any, ...]:
    parent = state.parent_config["configurable"]["checkpoint_id"] if state.parent_config else None
    return (state.config["configurable"]["checkpoint_id"], parent, tuple(state.next))


async def run_blocking(fn: Any) -> None:
    """Start or stop the server off the loop, so the storage's own tasks see the outage as it happens."""
    await asyncio.to_thread(fn)


def needs_control(pg_cluster: Any) -> None:
    if not pg_cluster.controllable:
        pytest.skip("the test PostgreSQL cannot be stopped or started (TEST_POSTGRES_URL)")


def is_synced(status: StorageStatus) -> bool:
    return status.active_tier == "postgres" and status.pending_sync == 0


async def local_keys(manager: Any, thread_id: str | None = None) -> tuple[set[Any], set[Any]]:
    return await manager.sqlite.checkpoint_keys(thread_id), await manager.sqlite.write_keys(thread_id)


async def until_synced(manager: Any, pg_url: str, timeout: float) -> None:
    """Wait until the status says Postgres holds everything and Postgres, asked directly, agrees."""

    async def check() -> bool:
        if not is_synced(manager.status()):
            return False
        checkpoints, writes = await local_keys(manager)
        return checkpoints <= await pg_checkpoint_keys(pg_url) and writes <= await pg_write_keys(pg_url)

    await eventually(check, timeout, f"everything local in Postgres; status {manager.status()}")


# --- tests ---------------------------------------------------------------------------------------------------
