"""A long conversation stays small in every tier, loses nothing, and can still be resumed and branched.

With plain savers every step re-stores the whole message list: a 1,000-turn chat (user ~200 characters, reply
~300) takes 1.3 GB in SQLite and ~290 MB in Postgres (docs/PERFORMANCE.md, the Storage section). Cairn keeps
messages in a ``DeltaChannel`` (chat/state.py), so a turn stores only its new messages, plus a full snapshot every
``SNAPSHOT_EVERY`` updates.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from chat.state import SNAPSHOT_EVERY, with_id
from storage.backends import SQLITE_FILE_NAME
from tests.support.chatgraph import build_graph, config, messages, turn
from tests.support.waiting import eventually, wait_for_status

pytestmark = pytest.mark.slow

TURNS = 1000
THREAD = "long-chat"
MB = 1024 * 1024
KB = 1024
TIER_LIMIT = 20 * MB
MEDIAN_UPLOAD_LIMIT = 16 * KB
# Two message updates per turn (the user's message, the reply): a full snapshot every SNAPSHOT_EVERY // 2 turns.
TURNS_PER_SNAPSHOT = SNAPSHOT_EVERY // 2
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "for",
    "was",
    "on",
    "are",
    "with",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "by",
    "word",
    "but",
    "what",
    "some",
]


def user_text(i: int) -> str:
    """~200 characters of word-like text, different for every turn (chatgraph's reply adds ~300 more)."""
    rng = random.Random(i)
    text = f"turn {i}:"
    while len(text) < 200:
        text += " " + rng.choice(WORDS)
    return text[:200]


def check_conversation(found: list[Any], turns: int) -> None:
    assert len(found) == 2 * turns
    for i in range(turns):
        question, reply = found[2 * i], found[2 * i + 1]
        assert question.type == "human" and question.content == user_text(i), f"turn {i}"
        assert reply.type == "ai" and reply.content.startswith(f"re: {user_text(i)[:20]} "), f"turn {i}"
    assert len({m.id for m in found}) == len(found)


async def sqlite_bytes(storage: Any) -> int:
    """The local file plus its WAL, after a checkpoint folded the WAL into the file."""
    sqlite = storage.manager.sqlite
    async with sqlite.saver.lock:
        await sqlite.saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path: Path = sqlite.path
    wal = path.with_name(SQLITE_FILE_NAME + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)  # noqa: ASYNC240


async def postgres_bytes(pool: AsyncConnectionPool) -> dict[str, int]:
    """pg_total_relation_size of every table: checkpoints, checkpoint_blobs, checkpoint_writes and Cairn's."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT c.relname AS name, pg_total_relation_size(c.oid) AS size FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'"
        )
        return {row["name"]: int(row["size"]) for row in await cursor.fetchall()}


async def upload_per_turn(pool: AsyncConnectionPool, thread_id: str) -> list[int]:
    """Bytes each turn added to Postgres, in turn order.

    A turn owns its checkpoints (a turn starts at each input checkpoint), their checkpoint and metadata
    JSONB, their writes, and the blobs its checkpoints reference first (a blob is keyed by channel and version, so
    it is owned by the first checkpoint whose channel_versions names it). Sizes are octet_length: what is sent,
    before TOAST compresses it.
    """
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT checkpoint_id, metadata->>'source' AS source, checkpoint->'channel_versions' AS versions, "
            "octet_length(checkpoint::text) + octet_length(metadata::text) AS size FROM checkpoints "
            "WHERE thread_id = %s AND checkpoint_ns = '' ORDER BY checkpoint_id",
            (thread_id,),
        )
        checkpoints = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT channel, version, octet_length(blob) AS size FROM checkpoint_blobs WHERE thread_id = %s",
            (thread_id,),
        )
        blobs = {(r["channel"], r["version"]): int(r["size"] or 0) for r in await cursor.fetchall()}
        cursor = await conn.execute(
            "SELECT checkpoint_id, sum(octet_length(blob)) AS size FROM checkpoint_writes WHERE thread_id = %s "
            "GROUP BY checkpoint_id",
            (thread_id,),
        )
        writes = {r["checkpoint_id"]: int(r["size"]) for r in await cursor.fetchall()}
    turns: list[int] = []
    for row in checkpoints:
        if row["source"] == "input":
            turns.append(0)
        size = int(row["size"]) + writes.get(row["checkpoint_id"], 0)
        for channel, version in (row["versions"] or {}).items():
            size += blobs.pop((channel, version), 0)
        turns[-1] += size
    return turns


async def checkpoint_ids(storage: Any, thread_id: str) -> list[str]:
    async with (
        storage.manager.sqlite.saver.lock,
        storage.manager.sqlite.saver.conn.execute(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' ORDER BY checkpoint_id",
            (thread_id,),
        ) as cursor,
    ):
        return [r[0] for r in await cursor.fetchall()]


async def wait_for_sync(storage: Any, timeout: float = 60.0) -> None:
    sqlite = storage.manager.sqlite

    async def outbox_empty() -> bool:
        return await sqlite.pending_count() == 0

    await eventually(outbox_empty, timeout, "the sync uploaded everything")
    await wait_for_status(storage.manager, lambda s: s.pending_sync == 0, timeout)


async def test_a_thousand_turns_stay_small_and_whole(tmp_path: Path, pg_url: str, open_storage) -> None:
    storage = await open_storage(tmp_path / "data", pg_url)
    assert storage.manager.status().active_tier == "postgres"
    graph = build_graph(storage.saver)
    for i in range(TURNS):
        await turn(graph, THREAD, user_text(i))
    await wait_for_sync(storage)
    assert storage.manager.remote is not None, storage.manager.status()

    # Storage: under 20 MB in each tier (plain savers: 1.3 GB and ~290 MB).
    local = await sqlite_bytes(storage)
    assert local < TIER_LIMIT, f"SQLite holds {local / MB:.1f} MB after {TURNS} turns"
    pool = AsyncConnectionPool(
        pg_url, min_size=1, max_size=2, open=False,
        kwargs={"autocommit": True, "prepare_threshold": None, "row_factory": dict_row},
    )  # fmt: skip
    await pool.open(wait=True, timeout=10)
    try:
        tables = await postgres_bytes(pool)
        assert {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "cairn_conversations"} <= set(tables)
        remote = sum(tables.values())
        assert remote < TIER_LIMIT, f"Postgres holds {remote / MB:.1f} MB after {TURNS} turns: {tables}"

        # Every message, in order, locally and through a plain AsyncPostgresSaver on the same database.
        check_conversation(await messages(graph, THREAD), TURNS)
        plain = build_graph(AsyncPostgresSaver(pool))  # type: ignore[arg-type]
        check_conversation(await messages(plain, THREAD), TURNS)

        # What a turn uploads: kilobytes. An ordinary turn sends its two new messages with three checkpoints'
        # JSON and the writes: 3.3 KB (measured; plain AsyncPostgresSaver: 1.8 MB at turn 1,000). A snapshot turn,
        # one every TURNS_PER_SNAPSHOT turns (100 with SNAPSHOT_EVERY = 200), also sends the whole list so far,
        # ~0.44 KB a message: 91 KB at turn 100, 877 KB at turn 1,000. That is the price of reads that replay at
        # most TURNS_PER_SNAPSHOT turns of writes; docs/PERFORMANCE.md has the trade-off.
        uploads = await upload_per_turn(pool, THREAD)
        assert len(uploads) == TURNS
        median = statistics.median(uploads)
        assert median < MEDIAN_UPLOAD_LIMIT, f"the median turn uploads {median / KB:.1f} KB"
        big = [i + 1 for i, size in enumerate(uploads) if size >= MEDIAN_UPLOAD_LIMIT]
        assert len(big) <= TURNS // TURNS_PER_SNAPSHOT + 1, f"{len(big)} turns uploaded 16 KB or more: {big}"
        assert sum(uploads) < TIER_LIMIT
        print(  # shown with -s: the numbers docs/PERFORMANCE.md quotes
            f"{TURNS} turns: SQLite {local / MB:.1f} MB, Postgres {remote / MB:.1f} MB {tables}; upload per turn "
            f"median {median / KB:.1f} KB, max {max(uploads) / KB:.0f} KB; turns of 16 KB or more: "
            + ", ".join(f"{t} ({uploads[t - 1] / KB:.0f} KB)" for t in big)
        )

        # Resume: one more turn continues the conversation.
        ids_before = await checkpoint_ids(storage, THREAD)
        await turn(graph, THREAD, user_text(TURNS))
        resumed = await messages(graph, THREAD)
        check_conversation(resumed, TURNS + 1)
        main_head = (await storage.saver.aget_tuple(config(THREAD))).config["configurable"]["checkpoint_id"]

        # Branch: invoke from the checkpoint that ended turn 500; the fork has turns 1-500 and the new message.
        fork_point = ids_before[3 * 500 - 1]
        assert (await storage.saver.aget_tuple(_at(fork_point))).metadata["step"] == 3 * 500 - 2
        fork_question = with_id(HumanMessage("Back at turn 500, a different question"))
        forked = await graph.ainvoke({"messages": [fork_question]}, _at(fork_point))
        fork_messages = forked["messages"]
        check_conversation(fork_messages[:1000], 500)
        assert [m.content for m in fork_messages[1000:-1]] == [fork_question.content]
        assert fork_messages[-1].content.startswith(f"re: {fork_question.content[:20]} ")
        fork_head = (await storage.saver.aget_tuple(config(THREAD))).config["configurable"]["checkpoint_id"]
        assert fork_head != main_head

        # Both branches are in the history, locally and in Postgres once synced, and each reads back whole.
        await wait_for_sync(storage)
        for saver, reader in ((storage.saver, graph), (AsyncPostgresSaver(pool), plain)):
            listed = [t async for t in saver.alist(config(THREAD), limit=6)]
            ids = [t.config["configurable"]["checkpoint_id"] for t in listed]
            assert fork_head in ids and main_head in ids
            fork_root = next(t for t in listed if t.metadata["step"] == listed[0].metadata["step"] - 2)
            assert fork_root.parent_config["configurable"]["checkpoint_id"] == fork_point
            main_state = await reader.aget_state(_at(main_head))
            assert [m.id for m in main_state.values["messages"]] == [m.id for m in resumed]
            fork_state = await reader.aget_state(_at(fork_head))
            assert [m.id for m in fork_state.values["messages"]] == [m.id for m in fork_messages]
    finally:
        await pool.close()


def _at(checkpoint_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": THREAD, "checkpoint_ns": "", "checkpoint_id": checkpoint_id}}
