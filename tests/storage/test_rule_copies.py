"""Rules that SQL must repeat agree with their one Python definition: the index merge
(``storage.conversations.merge_conversations``) as SQLite and Postgres upserts, and the checkpoint time read from a
UUID v6 id (``storage.schema.checkpoint_time``) as SQLite and Postgres expressions. A copy that drifts would make
two devices list the same conversation differently."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import replace
from pathlib import Path

import aiosqlite
import psycopg
import pytest
from langgraph.checkpoint.base.id import uuid6

from storage import schema
from storage.backends import Backend, MemoryBackend, PostgresBackend, PostgresTarget, SqliteBackend
from storage.conversations import Conversation, merge_conversations

# Every combination of the fields the rule decides on: which side changed metadata last (or a tie), a side that
# has no creation time yet, which side is older, deletions on either side.
_SIDES = [
    Conversation("t", title, model, created, updated, meta, pinned, deleted)
    for (title, model, pinned), created, updated, meta, deleted in itertools.product(
        [("mine", "m1", False), ("theirs", "m2", True)],
        [0.0, 100.0, 200.0],
        [300.0, 400.0],
        [10.0, 20.0],
        [False, True],
    )
]
PAIRS = [(mine, theirs) for mine in _SIDES for theirs in _SIDES if mine.title == "mine" and theirs.title == "theirs"]


def _ids(pair: tuple[Conversation, Conversation]) -> str:
    mine, theirs = pair
    return "-".join(
        f"{c.created:g}/{c.updated:g}/{c.meta_changed:g}/{'d' if c.deleted else 'a'}" for c in (mine, theirs)
    )


async def _merged_by(backend: Backend, pairs: list[tuple[Conversation, Conversation]]) -> list[Conversation]:
    """Each pair merged by the backend's own SQL: ``mine`` stored first, ``theirs`` merged into it."""
    rows = []
    for n, (mine, theirs) in enumerate(pairs):
        tid = f"t{n}"
        await backend.merge_conversations([replace(mine, thread_id=tid)])
        await backend.merge_conversations([replace(theirs, thread_id=tid)])
        row = await backend.conversation(tid)
        assert row is not None
        rows.append(replace(row, thread_id="t"))
    return rows


def test_the_cases_cover_every_branch_of_the_rule() -> None:
    merged = [merge_conversations(mine, theirs) for mine, theirs in PAIRS]
    assert {m.title for m in merged} == {"mine", "theirs"}  # either side's metadata can win
    assert {m.created for m in merged} == {0.0, 100.0, 200.0}
    assert {m.deleted for m in merged} == {False, True}


async def test_sqlite_memory_and_postgres_merge_index_rows_as_python_does(tmp_path: Path, pg_url: str) -> None:
    expected = [merge_conversations(mine, theirs) for mine, theirs in PAIRS]
    sqlite = await SqliteBackend.open(tmp_path)
    postgres = await PostgresBackend.open(PostgresTarget(url=pg_url, connect_timeout=5))
    try:
        for backend in (MemoryBackend(), sqlite, postgres):
            got = await _merged_by(backend, PAIRS)
            wrong = [
                f"{_ids(pair)}: {backend.tier} gave {g}, Python {e}"
                for pair, g, e in zip(PAIRS, got, expected, strict=True)
                if g != e
            ]
            assert not wrong, "\n".join(wrong)
    finally:
        await sqlite.close()
        await postgres.close()


def _checkpoint_ids() -> list[str]:
    """Ids made now, and ids a machine with a clock far off would make, up to the edges of the 60-bit field."""
    edges = (schema._UUID6_EPOCH, schema._UUID6_EPOCH + 1, 0x01F0_0000_0000_0000, 0x0FFF_FFFF_FFFF_FFFF)
    return [str(uuid6()) for _ in range(20)] + [_v6(ticks) for ticks in edges]


def _v6(ticks: int) -> str:
    """A UUID v6 holding ``ticks`` (100 ns since 1582) as its timestamp."""
    value = (ticks >> 12) << 80 | 0x6 << 76 | (ticks & 0x0FFF) << 64 | 0x8 << 60 | 0x1234_5678_9ABC
    return str(uuid.UUID(int=value))


async def test_sqlite_and_postgres_read_checkpoint_times_as_python_does(tmp_path: Path, pg_url: str) -> None:
    ids = _checkpoint_ids()
    expected = [schema.checkpoint_time(i) for i in ids]
    assert all(e is not None for e in expected)
    assert schema.checkpoint_time(str(uuid.uuid4())) is None

    # SQLite's copy also clamps to now (a clock running ahead must not pin a conversation to the top), as the
    # memory tier does in Python and Postgres' triggers do around the function.
    before = time.time()
    async with aiosqlite.connect(tmp_path / "times.sqlite") as conn:
        sqlite_got = []
        for i in ids:
            query = f"SELECT {schema._sqlite_checkpoint_time('id')} FROM (SELECT ? AS id)"
            async with conn.execute(query, (i,)) as cursor:
                sqlite_got.append((await cursor.fetchone())[0])
    after = time.time()
    for i, got, made in zip(ids, sqlite_got, expected, strict=True):
        assert made is not None
        # Made "now" (SQLite's 'now' has millisecond steps, and the id clock may run a tick ahead of the wall clock)
        # or years ahead: clamped to SQLite's now.
        if made > before - 0.005:
            assert before - 0.005 <= got <= max(made, after), f"{i}: SQLite {got!r} is not clamped to now"
            assert got == pytest.approx(made, abs=1e-6) or got <= after, f"{i}: SQLite {got!r}, Python {made!r}"
        else:
            assert got == pytest.approx(made, abs=1e-6), f"{i}: SQLite {got!r}, Python {made!r}"
    postgres = await PostgresBackend.open(PostgresTarget(url=pg_url, connect_timeout=5))  # installs the function
    await postgres.close()
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        postgres_got = [await _postgres_time(conn, i) for i in ids]
        assert await _postgres_time(conn, str(uuid.uuid4())) is None

    wrong = [
        f"{i}: Postgres {g!r}, Python {e!r}"
        for i, g, e in zip(ids, postgres_got, expected, strict=True)
        if g != pytest.approx(e, abs=1e-6)
    ]
    assert not wrong, "\n".join(wrong)


async def _postgres_time(conn: psycopg.AsyncConnection, checkpoint_id: str) -> float | None:
    row = await (await conn.execute("SELECT cairn_checkpoint_time(%s)", (checkpoint_id,))).fetchone()
    assert row is not None
    return row[0]
