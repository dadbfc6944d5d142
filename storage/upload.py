"""Uploading a backlog of local checkpoints to Postgres in batches: LangGraph's Postgres rows, one trip per batch.

Copying one checkpoint at a time (``sync.copy_checkpoint``) costs a pool checkout and a round trip per statement:
10,000 checkpoints took 25-40 s on loopback, one turn 1.1 s at 50 ms of latency. Here a batch of checkpoints is read
from the local tier in a few queries, turned into exactly the rows ``aput(parent_config, checkpoint, metadata,
checkpoint["channel_versions"])`` and ``aput_writes`` store (with LangGraph's own helpers and SQL), and sent in one
pipeline inside one transaction: a batch is in Postgres whole or not at all. docs/PERFORMANCE.md has the numbers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    Checkpoint,
    CheckpointMetadata,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres.base import BasePostgresSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

Key = tuple[str, str, str]


class StoredWrite(NamedTuple):
    """One pending write as a local tier holds it; ``idx`` is the one ``aput_writes`` gave it (WRITES_IDX_MAP
    already applied), kept as it is so both tiers key the write alike."""

    task_id: str
    task_path: str
    idx: int
    channel: str
    value: Any


@dataclass
class StoredCheckpoint:
    """One checkpoint, decoded, with its parent's id and its pending writes."""

    key: Key
    parent_id: str | None
    checkpoint: Checkpoint
    metadata: CheckpointMetadata
    writes: list[StoredWrite] = field(default_factory=list)


# --- reading SQLite --------------------------------------------------------------------------------------------

SQLITE_BATCH_LIMIT = 300
"""Keys per read: three parameters each, under SQLite's oldest limit of 999 per statement."""


def sqlite_keys_cte(count: int) -> str:
    return "WITH k (thread_id, checkpoint_ns, checkpoint_id) AS (VALUES " + ", ".join(["(?, ?, ?)"] * count) + ") "


SQLITE_CHECKPOINTS_SQL = (
    "SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.type, c.checkpoint, c.metadata "
    "FROM k JOIN checkpoints c USING (thread_id, checkpoint_ns, checkpoint_id)"
)


def sqlite_writes_sql(has_task_path: bool) -> str:
    task_path = "w.task_path" if has_task_path else "''"  # as AsyncSqliteSaver reads a file from before the column
    return (
        f"SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, {task_path}, w.idx, w.channel, w.type, "
        "w.value FROM k JOIN writes w USING (thread_id, checkpoint_ns, checkpoint_id)"
    )


def from_sqlite(
    serde: SerializerProtocol, checkpoint_rows: Iterable[Sequence[Any]], write_rows: Iterable[Sequence[Any]]
) -> list[StoredCheckpoint]:
    """Decode rows of SQLite's ``checkpoints`` and ``writes`` tables as ``AsyncSqliteSaver.aget_tuple`` does."""
    found: dict[Key, StoredCheckpoint] = {}
    for thread_id, ns, checkpoint_id, parent_id, type_, blob, metadata in checkpoint_rows:
        key = (thread_id, ns, checkpoint_id)
        found[key] = StoredCheckpoint(
            key,
            parent_id,
            serde.loads_typed((type_, blob)),
            json.loads(metadata) if metadata is not None else {},
        )
    for thread_id, ns, checkpoint_id, task_id, task_path, idx, channel, type_, value in write_rows:
        stored = found.get((thread_id, ns, checkpoint_id))
        if stored is not None:  # writes without their checkpoint wait for it, as copy_checkpoint's did
            stored.writes.append(StoredWrite(task_id, task_path, idx, channel, serde.loads_typed((type_, value))))
    return list(found.values())


# --- Postgres rows ---------------------------------------------------------------------------------------------

IDX = 5
"""Where ``idx`` is in a row of ``_dump_writes`` (the column order of UPSERT_CHECKPOINT_WRITES_SQL)."""


@dataclass
class PostgresRows:
    """Parameters for LangGraph's upserts, in the order ``aput`` sends them."""

    blobs: list[tuple[Any, ...]] = field(default_factory=list)
    checkpoints: list[tuple[Any, ...]] = field(default_factory=list)
    writes: list[tuple[Any, ...]] = field(default_factory=list)
    special_writes: list[tuple[Any, ...]] = field(default_factory=list)


def postgres_rows(saver: BasePostgresSaver, batch: Iterable[StoredCheckpoint]) -> PostgresRows:
    """The rows ``saver.aput`` and ``saver.aput_writes`` would store for each checkpoint (CPU work: run it off the
    event loop)."""
    rows = PostgresRows()
    for stored in batch:
        thread_id, ns, checkpoint_id = stored.key
        checkpoint = stored.checkpoint
        parent_config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
        if stored.parent_id is not None:
            parent_config["configurable"]["checkpoint_id"] = stored.parent_id
        # What aput does with the values (langgraph/checkpoint/postgres/aio.py): primitives stay inline in the
        # checkpoint's JSON, a delta channel's snapshot goes to a blob and leaves `true` inline, the rest go to blobs.
        copy = checkpoint.copy()
        copy["channel_values"] = inline = dict(checkpoint["channel_values"])
        blob_values: dict[str, Any] = {}
        for channel, value in checkpoint["channel_values"].items():
            if isinstance(value, _DeltaSnapshot):
                blob_values[channel] = inline.pop(channel)
                inline[channel] = True
            elif value is None or isinstance(value, str | int | float | bool):
                pass
            else:
                blob_values[channel] = inline.pop(channel)
        versions = {k: v for k, v in checkpoint["channel_versions"].items() if k in blob_values}
        if versions:
            rows.blobs.extend(saver._dump_blobs(thread_id, ns, blob_values, versions))
        metadata = get_serializable_checkpoint_metadata(parent_config, stored.metadata)  # type: ignore[arg-type]
        rows.checkpoints.append((thread_id, ns, checkpoint["id"], stored.parent_id, Jsonb(copy), Jsonb(metadata)))
        for write in stored.writes:
            # _dump_writes numbers a call's writes from 0: put back the idx the write's own aput_writes gave it
            # (renumbering a task's writes together would move its regular writes, after a resume for one).
            (row,) = saver._dump_writes(
                thread_id, ns, checkpoint_id, write.task_id, write.task_path, [(write.channel, write.value)]
            )
            numbered = (*row[:IDX], write.idx, *row[IDX + 1 :])
            # aput_writes overwrites special writes (errors, interrupts) and never regular ones: a local special
            # write may have been replaced since an earlier upload, a regular one never changes.
            (rows.special_writes if write.channel in WRITES_IDX_MAP else rows.writes).append(numbered)
    return rows


# --- sending ---------------------------------------------------------------------------------------------------


def _statements(rows: PostgresRows) -> list[tuple[str, list[tuple[Any, ...]]]]:
    return [
        (sql, params)
        for sql, params in (
            (BasePostgresSaver.UPSERT_CHECKPOINT_BLOBS_SQL, rows.blobs),
            (BasePostgresSaver.UPSERT_CHECKPOINTS_SQL, rows.checkpoints),
            (BasePostgresSaver.INSERT_CHECKPOINT_WRITES_SQL, rows.writes),
            (BasePostgresSaver.UPSERT_CHECKPOINT_WRITES_SQL, rows.special_writes),
        )
        if params
    ]


# BEGIN and COMMIT go down the pipeline with the rows, so a batch costs one round trip (psycopg's transaction()
# syncs the pipeline on the way in and out). On an error the server skips the rest up to the sync, COMMIT included:
# nothing of the batch is stored. Binary cursors, as LangGraph's own: bytea travels as bytes, not hex.
async def aput_rows(conn: psycopg.AsyncConnection[Any], rows: PostgresRows) -> None:
    """Store ``rows`` in one transaction on an autocommit connection, in one round trip where libpq pipelines."""
    if not psycopg.AsyncPipeline.is_supported():
        async with conn.transaction(), conn.cursor(binary=True) as cursor:
            for sql, params in _statements(rows):
                await cursor.executemany(sql, params)
        return
    try:
        async with conn.pipeline(), conn.cursor(binary=True) as cursor:
            await cursor.execute("BEGIN")
            for sql, params in _statements(rows):
                await cursor.executemany(sql, params)
            await cursor.execute("COMMIT")
    except psycopg.Error:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()  # the server answered the batch with an error: leave the connection clean
        raise


def put_rows(conn: psycopg.Connection[Any], rows: PostgresRows) -> None:
    """``aput_rows`` for a sync connection (call it in a worker thread)."""
    if not psycopg.Pipeline.is_supported():
        with conn.transaction(), conn.cursor(binary=True) as cursor:
            for sql, params in _statements(rows):
                cursor.executemany(sql, params)
        return
    try:
        with conn.pipeline(), conn.cursor(binary=True) as cursor:
            cursor.execute("BEGIN")
            for sql, params in _statements(rows):
                cursor.executemany(sql, params)
            cursor.execute("COMMIT")
    except psycopg.Error:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        raise
