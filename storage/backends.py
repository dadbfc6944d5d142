"""The three places a conversation can live, each a LangGraph saver plus the few queries sync needs.

A backend owns one saver and answers, cheaply and without decoding checkpoints: which checkpoint and write keys it
holds, the task paths of a checkpoint's writes, and its rows of the conversation index. The local backends (SQLite,
memory) also keep the outbox of what Postgres still lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import aiosqlite
import psycopg
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.postgres.base import BasePostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from storage import schema, upload
from storage.conversations import Conversation, merge_conversations, row_to_conversation
from storage.errors import describe, is_corruption, is_environment_error
from storage.postgres_url import check_postgres_url
from storage.schema import SQLITE_FILE_NAME
from storage.threaded import ThreadedSaver
from storage.upload import StoredCheckpoint, StoredWrite

log = logging.getLogger("cairn.storage")

# storage.conversations.merge_conversations's choice of the row whose title, model and pin win, in each SQL: the
# newest edit, on a tie the larger values. Postgres compares text by the database's collation unless told "C"
# (code point order, as Python and SQLite's BINARY do).
_THEIRS_WIN = (
    "(excluded.meta_changed, excluded.title, excluded.model, excluded.pinned) > (meta_changed, title, model, pinned)"
)
_THEIRS_WIN_PG = (
    '(excluded.meta_changed, excluded.title COLLATE "C", excluded.model COLLATE "C", excluded.pinned)'
    ' > (cur.meta_changed, cur.title COLLATE "C", cur.model COLLATE "C", cur.pinned)'
)

Key = tuple[str, str, str]
"""(thread_id, checkpoint_ns, checkpoint_id): how every saver keys a checkpoint."""
WriteKey = tuple[str, str, str, str, int]
"""(thread_id, checkpoint_ns, checkpoint_id, task_id, idx): how every saver keys a pending write."""



class Backend(ABC):
    """A saver and the queries about what it holds."""

    tier: ClassVar[str]
    saver: BaseCheckpointSaver[str]

    @abstractmethod
    async def checkpoint_keys(self, thread_id: str | None = None) -> set[Key]: ...

    @abstractmethod
    async def write_keys(self, thread_id: str | None = None) -> set[WriteKey]: ...

    @abstractmethod
    async def task_paths(self, key: Key) -> dict[str, str]:
        """task_id -> task_path of the writes stored at one checkpoint (CheckpointTuple drops the path)."""

    @abstractmethod
    async def conversations(self) -> list[Conversation]:
        """Every index row, tombstones included."""

    async def conversation(self, thread_id: str) -> Conversation | None:
        """One index row (a tombstone too), or None."""
        return next((c for c in await self.conversations() if c.thread_id == thread_id), None)

    @abstractmethod
    async def merge_conversations(self, rows: Sequence[Conversation], *, dirty: bool = False) -> None:
        """Insert or merge rows by ``merge_conversations``; ``dirty`` marks them for upload (local backends)."""

    async def delete_thread(self, thread_id: str) -> None:
        await self.saver.adelete_thread(thread_id)

    async def leaves(self, thread_id: str) -> set[str]:
        """The ids of the thread's checkpoints that nothing continues: one per branch (root namespace)."""
        items = [t async for t in self.saver.alist({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})]
        parents = {t.parent_config["configurable"]["checkpoint_id"] for t in items if t.parent_config}
        return {t.checkpoint["id"] for t in items} - parents

    @abstractmethod
    async def search_messages(self, text: str) -> set[str]:
        """Threads with a stored message containing ``text`` (searched in the serialized writes, no decoding)."""

    @abstractmethod
    async def close(self) -> None: ...


class LocalBackend(Backend):
    """A backend the user's words land in first; remembers what Postgres has not confirmed yet."""

    @abstractmethod
    async def pending(self, limit: int) -> tuple[list[Key], int]:
        """Up to ``limit`` distinct keys still to upload, oldest first per thread, and the outbox mark they cover."""

    @abstractmethod
    async def acknowledge(self, keys: Iterable[Key], mark: int) -> None:
        """These keys are in Postgres as of ``mark``: forget their outbox entries up to it."""

    @abstractmethod
    async def stored(self, keys: Sequence[Key]) -> list[StoredCheckpoint]:
        """These checkpoints with their writes, decoded, for an upload; keys no longer here are left out."""

    @abstractmethod
    async def pending_count(self) -> int: ...

    @abstractmethod
    async def outbox_mark(self) -> int:
        """The newest outbox position; entries after it were written later."""

    @abstractmethod
    async def forget_after(self, keys: Iterable[Key], mark: int) -> None:
        """Drop outbox entries newer than ``mark`` for keys that came from Postgres (no need to send them back)."""

    @abstractmethod
    async def enqueue(self, keys: Iterable[Key]) -> None:
        """Add keys to the outbox (found missing in Postgres by a full comparison)."""

    @abstractmethod
    async def dirty_conversations(self) -> list[Conversation]: ...

    @abstractmethod
    async def mark_clean(self, conversation: Conversation) -> None:
        """The row was uploaded; clear its flag unless it changed again since."""

    @abstractmethod
    async def update_conversation(self, thread_id: str, **changes: Any) -> Conversation:
        """A local edit of title, model, pinned or deleted; stamps ``meta_changed`` and marks the row dirty."""


# --------------------------------------------------------------------------------------------------------------
# SQLite


class SqliteBackend(LocalBackend):
    tier = "sqlite"
    saver: AsyncSqliteSaver

    def __init__(self, saver: AsyncSqliteSaver, path: Path, note: str | None) -> None:
        self.saver = saver
        self.path = path
        self.note = note
        """Set when the file was found corrupt and moved aside at open; shown with the tier."""
        self.identity = _file_identity(path)
        """(device, inode) of the file opened: the path showing another file (or none) means it was deleted or
        replaced under us, while this connection goes on reading and writing the unlinked one."""

    def file_state(self) -> str:
        """"" while the path is still the file this connection has open; else what happened to it, in words."""
        found = _file_identity(self.path)
        if found is None:
            return "the local database file was deleted while Cairn was running"
        if found != self.identity:
            return "the local database file was replaced while Cairn was running"
        return ""

    async def probe_write(self) -> None:
        """A small real write (raises when the file cannot be written: a full disk, a read-only folder)."""
        await self._execute("UPDATE cairn_device SET id = id")

    async def set_device_id(self, device: str) -> None:
        await self._execute("UPDATE cairn_device SET id = ?", (device,))

    @classmethod
    async def open(cls, data_dir: Path) -> SqliteBackend:
        """Open (or create) the local database; a corrupt file is moved aside and replaced by a fresh one."""
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        path = data_dir / SQLITE_FILE_NAME
        try:
            return cls(await _open_sqlite_saver(path), path, None)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            aside = await asyncio.to_thread(_move_aside, path)
            note = f"{describe(exc)}; the damaged file was moved to {aside.name} and a new one started"
            log.error("SQLite file %s is corrupt: %s", path, note)
            return cls(await _open_sqlite_saver(path), path, note)

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self.saver.lock:
            # One trip to aiosqlite's thread (a cursor's execute, fetch and close are three).
            return list(await self.saver.conn.execute_fetchall(sql, params))

    async def _execute(self, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> None:
        conn = self.saver.conn
        async with self.saver.lock:
            if many:
                await conn.executemany(sql, params)
            else:
                await conn.execute(sql, params)
            await conn.commit()

    async def checkpoint_keys(self, thread_id: str | None = None) -> set[Key]:
        where, params = ("WHERE thread_id = ?", (thread_id,)) if thread_id is not None else ("", ())
        rows = await self._fetch(f"SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints {where}", params)
        return {(r[0], r[1], r[2]) for r in rows}

    async def write_keys(self, thread_id: str | None = None) -> set[WriteKey]:
        where, params = ("WHERE thread_id = ?", (thread_id,)) if thread_id is not None else ("", ())
        rows = await self._fetch(
            f"SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM writes {where}", params
        )
        return {(r[0], r[1], r[2], r[3], r[4]) for r in rows}

    async def task_paths(self, key: Key) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT DISTINCT task_id, task_path FROM writes WHERE thread_id = ? AND checkpoint_ns = ? "
            "AND checkpoint_id = ?",
            key,
        )
        return {task_id: path for task_id, path in rows}

    async def conversations(self) -> list[Conversation]:
        rows = await self._fetch(f"SELECT {schema.INDEX_COLUMNS} FROM cairn_conversations")
        return [row_to_conversation(r) for r in rows]

    async def conversation(self, thread_id: str) -> Conversation | None:
        rows = await self._fetch(
            f"SELECT {schema.INDEX_COLUMNS} FROM cairn_conversations WHERE thread_id = ?", (thread_id,)
        )
        return row_to_conversation(rows[0]) if rows else None

    async def merge_conversations(self, rows: Sequence[Conversation], *, dirty: bool = False) -> None:
        if not rows:
            return
        await self._execute(
            f"""INSERT INTO cairn_conversations ({schema.INDEX_COLUMNS}, dirty) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (thread_id) DO UPDATE SET
              title = CASE WHEN {_THEIRS_WIN} THEN excluded.title ELSE title END,
              model = CASE WHEN {_THEIRS_WIN} THEN excluded.model ELSE model END,
              pinned = CASE WHEN {_THEIRS_WIN} THEN excluded.pinned ELSE pinned END,
              created = CASE WHEN excluded.created > 0 AND (created = 0 OR excluded.created < created)
                             THEN excluded.created ELSE created END,
              updated = max(updated, excluded.updated),
              meta_changed = max(meta_changed, excluded.meta_changed),
              deleted = max(deleted, excluded.deleted),
              dirty = max(dirty, excluded.dirty)""",
            [
                (c.thread_id, c.title, c.model, c.created, c.updated, c.meta_changed, c.pinned, c.deleted, int(dirty))
                for c in rows
            ],
            many=True,
        )

    async def leaves(self, thread_id: str) -> set[str]:
        # EXCEPT, not NOT EXISTS: no index on parent_checkpoint_id, and a correlated lookup per checkpoint made this
        # quadratic (130 ms at 3,000 checkpoints, on every open of a long conversation).
        rows = await self._fetch(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' EXCEPT "
            "SELECT parent_checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ''",
            (thread_id, thread_id),
        )
        return {r[0] for r in rows}

    async def device_id(self) -> str:
        rows = await self._fetch("SELECT id FROM cairn_device LIMIT 1")
        return str(rows[0][0])

    async def changes_since(self, seq: int) -> list[tuple[str, int]]:
        """(thread, position) of the threads changed after position ``seq`` of the change log, in order."""
        rows = await self._fetch("SELECT thread_id, seq FROM cairn_changes WHERE seq > ? ORDER BY seq", (seq,))
        return [(r[0], int(r[1])) for r in rows]

    async def newest_checkpoint_id(self) -> str | None:
        rows = await self._fetch("SELECT max(checkpoint_id) FROM checkpoints")
        return rows[0][0] if rows else None

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits to the file; not for our own commits."""
        rows = await self._fetch("PRAGMA data_version")
        return int(rows[0][0])

    async def pending(self, limit: int) -> tuple[list[Key], int]:
        rows = await self._fetch(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, max(seq) FROM cairn_outbox "
            "GROUP BY thread_id, checkpoint_ns, checkpoint_id ORDER BY thread_id, checkpoint_ns, checkpoint_id "
            "LIMIT ?",
            (limit,),
        )
        mark = max((r[3] for r in rows), default=0)
        return [(r[0], r[1], r[2]) for r in rows], mark

    async def acknowledge(self, keys: Iterable[Key], mark: int) -> None:
        await self._execute(
            "DELETE FROM cairn_outbox WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ? AND seq <= ?",
            [(*k, mark) for k in keys],
            many=True,
        )

    async def stored(self, keys: Sequence[Key]) -> list[StoredCheckpoint]:
        found: list[StoredCheckpoint] = []
        conn = self.saver.conn
        writes_sql = upload.sqlite_writes_sql(self.saver._has_task_path)
        for start in range(0, len(keys), upload.SQLITE_BATCH_LIMIT):
            part = keys[start : start + upload.SQLITE_BATCH_LIMIT]
            cte = upload.sqlite_keys_cte(len(part))
            params = [value for key in part for value in key]
            async with self.saver.lock:  # both reads see one state of the file
                checkpoints = await conn.execute_fetchall(cte + upload.SQLITE_CHECKPOINTS_SQL, params)
                writes = await conn.execute_fetchall(cte + writes_sql, params)
            found += await asyncio.to_thread(upload.from_sqlite, self.saver.serde, checkpoints, writes)
        return found

    async def pending_count(self) -> int:
        rows = await self._fetch(
            "SELECT count(*) FROM (SELECT DISTINCT thread_id, checkpoint_ns, checkpoint_id FROM cairn_outbox)"
        )
        return int(rows[0][0])

    async def outbox_mark(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(seq), 0) FROM cairn_outbox")
        return int(rows[0][0])

    async def forget_after(self, keys: Iterable[Key], mark: int) -> None:
        await self._execute(
            "DELETE FROM cairn_outbox WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ? AND seq > ?",
            [(*k, mark) for k in keys],
            many=True,
        )

    async def enqueue(self, keys: Iterable[Key]) -> None:
        await self._execute(
            "INSERT INTO cairn_outbox (thread_id, checkpoint_ns, checkpoint_id) VALUES (?, ?, ?)",
            list(keys),
            many=True,
        )

    async def dirty_conversations(self) -> list[Conversation]:
        rows = await self._fetch(f"SELECT {schema.INDEX_COLUMNS} FROM cairn_conversations WHERE dirty = 1")
        return [row_to_conversation(r) for r in rows]

    async def mark_clean(self, conversation: Conversation) -> None:
        await self._execute(
            "UPDATE cairn_conversations SET dirty = 0 WHERE thread_id = ? AND meta_changed = ?",
            (conversation.thread_id, conversation.meta_changed),
        )

    async def update_conversation(self, thread_id: str, **changes: Any) -> Conversation:
        rows = await self._fetch(
            f"SELECT {schema.INDEX_COLUMNS} FROM cairn_conversations WHERE thread_id = ?", (thread_id,)
        )
        now = time.time()
        current = row_to_conversation(rows[0]) if rows else Conversation(thread_id, created=now, updated=now)
        changed = replace(current, **changes, meta_changed=max(now, current.meta_changed + 1e-6))
        c = changed
        await self._execute(
            f"""INSERT INTO cairn_conversations ({schema.INDEX_COLUMNS}, dirty) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)
            ON CONFLICT (thread_id) DO UPDATE SET title = excluded.title, model = excluded.model,
              pinned = excluded.pinned, deleted = max(deleted, excluded.deleted),
              meta_changed = excluded.meta_changed, dirty = 1""",
            (c.thread_id, c.title, c.model, c.created, c.updated, c.meta_changed, c.pinned, c.deleted),
        )
        return changed

    async def search_messages(self, text: str) -> set[str]:
        if text.isascii():
            # SQLite's lower() folds ASCII only, in C: all an ASCII needle needs, three times faster than a function.
            where, needle = "instr(lower(CAST(value AS TEXT)), lower(?)) > 0", text
        else:
            where, needle = f"{FOLDED_CONTAINS}(value, ?)", text.casefold()
        rows = await self._fetch(
            f"SELECT DISTINCT thread_id FROM writes WHERE channel = 'messages' AND {where}", (needle,)
        )
        return {r[0] for r in rows}

    async def delete_thread(self, thread_id: str) -> None:
        await self.saver.adelete_thread(thread_id)
        await self._execute("DELETE FROM cairn_outbox WHERE thread_id = ?", (thread_id,))

    async def close(self) -> None:
        try:
            await self.saver.conn.close()
        except Exception as exc:
            if not is_environment_error(exc):
                raise
            # A file that failed (deleted, full, its disk gone) may fail to close too: it is let go either way.
            log.debug("closing %s: %s", self.path, describe(exc))


FOLDED_CONTAINS = "cairn_folded_contains"


def folded_contains(serialized: bytes | None, needle: str) -> bool:
    """Whether serialized messages hold ``needle`` (casefolded), in any case: msgpack keeps strings as UTF-8."""
    return serialized is not None and needle in bytes(serialized).decode("utf-8", "ignore").casefold()


def _escape_bytea(data: bytes) -> str:
    """``data`` as Postgres's ``encode(data, 'escape')`` writes it."""
    return "".join(
        f"\\{b:03o}" if b == 0 or b >= 0x80 else ("\\\\" if b == 0x5C else chr(b)) for b in data
    )


async def _open_sqlite_saver(path: Path) -> AsyncSqliteSaver:
    conn = await aiosqlite.connect(path, timeout=10)
    try:
        await conn.create_function(FOLDED_CONTAINS, 2, folded_contains, deterministic=True)
        saver = AsyncSqliteSaver(conn)
        await saver.setup()
        async with saver.lock:
            await _migrate_sqlite(conn)
    except BaseException:
        await conn.close()
        raise
    return saver


async def _migrate_sqlite(conn: aiosqlite.Connection) -> None:
    await conn.execute(schema.SQLITE_MIGRATIONS_TABLE)
    async with conn.execute("SELECT coalesce(max(v), -1) FROM cairn_migrations") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else -1
    for v in range(version + 1, len(schema.SQLITE_MIGRATIONS)):
        await conn.executescript(schema.SQLITE_MIGRATIONS[v])
        await conn.execute("INSERT INTO cairn_migrations (v) VALUES (?)", (v,))
    await conn.execute(schema.SQLITE_RECONCILE_INDEX)
    await conn.commit()


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _move_aside(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    # A second damaged file within the same second must not replace the first (a rename overwrites on POSIX).
    n = 1
    while any(p.exists() for p in (aside, aside.with_name(aside.name + "-wal"), aside.with_name(aside.name + "-shm"))):
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    shutil.move(path, aside)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            shutil.move(companion, aside.with_name(aside.name + suffix))
    return aside


# --------------------------------------------------------------------------------------------------------------
# Memory


class MemoryBackend(LocalBackend):
    """The last resort: nothing here survives the app, which the badge says in red."""

    tier = "memory"

    def __init__(self) -> None:
        self.saver: InMemorySaver = InMemorySaver()
        self._outbox: dict[Key, int] = {}
        self._seq = 0
        self._index: dict[str, Conversation] = {}
        self._dirty: set[str] = set()

    def _touch(self, key: Key) -> None:
        thread_id, checkpoint_ns, checkpoint_id = key
        if checkpoint_ns:
            return
        now = time.time()
        made = min(now, schema.checkpoint_time(checkpoint_id) or now)
        current = self._index.get(thread_id) or Conversation(thread_id, created=made, updated=made)
        self._index[thread_id] = replace(
            current, updated=max(current.updated, made), created=min(current.created, made)
        )

    def record_put(self, key: Key) -> None:
        """What the SQLite triggers do, done by the caller after each write into memory."""
        self._seq += 1
        self._outbox[key] = self._seq
        self._touch(key)

    def unsaved_threads(self) -> set[str]:
        """Conversations with turns or index changes that only this memory holds, lost when the app quits: what no
        durable tier has confirmed (the sync acknowledges what Postgres took)."""
        turns = {key[0] for key in self._outbox}
        rows = {t for t in self._dirty if t in self._index and not self._index[t].deleted}
        return turns | rows

    async def checkpoint_keys(self, thread_id: str | None = None) -> set[Key]:
        keys: set[Key] = set()
        for tid, namespaces in list(self.saver.storage.items()):
            if thread_id is not None and tid != thread_id:
                continue
            for ns, checkpoints in namespaces.items():
                keys.update((tid, ns, cid) for cid in checkpoints)
        return keys

    async def write_keys(self, thread_id: str | None = None) -> set[WriteKey]:
        keys: set[WriteKey] = set()
        for (tid, ns, cid), writes in list(self.saver.writes.items()):
            if thread_id is None or tid == thread_id:
                keys.update((tid, ns, cid, task_id, idx) for task_id, idx in writes)
        return keys

    async def task_paths(self, key: Key) -> dict[str, str]:
        return {task_id: w[3] for (task_id, _idx), w in self.saver.writes.get(key, {}).items()}

    async def conversations(self) -> list[Conversation]:
        return list(self._index.values())

    async def conversation(self, thread_id: str) -> Conversation | None:
        return self._index.get(thread_id)

    async def merge_conversations(self, rows: Sequence[Conversation], *, dirty: bool = False) -> None:
        for row in rows:
            self._index[row.thread_id] = merge_conversations(self._index.get(row.thread_id), row)
            if dirty:
                self._dirty.add(row.thread_id)

    async def pending(self, limit: int) -> tuple[list[Key], int]:
        keys = sorted(self._outbox)[:limit]
        return keys, max((self._outbox[k] for k in keys), default=0)

    async def acknowledge(self, keys: Iterable[Key], mark: int) -> None:
        for key in keys:
            if self._outbox.get(key, math.inf) <= mark:
                del self._outbox[key]

    async def stored(self, keys: Sequence[Key]) -> list[StoredCheckpoint]:
        found: list[StoredCheckpoint] = []
        serde = self.saver.serde
        for key in keys:
            thread_id, checkpoint_ns, checkpoint_id = key
            configurable = {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint_id}
            saved = await self.saver.aget_tuple({"configurable": configurable})
            if saved is None:
                continue
            parent = saved.parent_config["configurable"]["checkpoint_id"] if saved.parent_config else None
            writes = [
                StoredWrite(task_id, path, idx, channel, serde.loads_typed(value))
                for (_, idx), (task_id, channel, value, path) in self.saver.writes.get(key, {}).items()
            ]
            found.append(StoredCheckpoint(key, parent, saved.checkpoint, saved.metadata, writes))
        return found

    async def pending_count(self) -> int:
        return len(self._outbox)

    async def outbox_mark(self) -> int:
        return self._seq

    async def forget_after(self, keys: Iterable[Key], mark: int) -> None:
        for key in keys:
            if self._outbox.get(key, -1) > mark:
                del self._outbox[key]

    async def enqueue(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._seq += 1
            self._outbox[key] = self._seq

    async def dirty_conversations(self) -> list[Conversation]:
        return [self._index[t] for t in self._dirty if t in self._index]

    async def mark_clean(self, conversation: Conversation) -> None:
        current = self._index.get(conversation.thread_id)
        if current is not None and current.meta_changed == conversation.meta_changed:
            self._dirty.discard(conversation.thread_id)

    async def update_conversation(self, thread_id: str, **changes: Any) -> Conversation:
        now = time.time()
        current = self._index.get(thread_id) or Conversation(thread_id, created=now, updated=now)
        changed = replace(current, **changes, meta_changed=max(now, current.meta_changed + 1e-6))
        changed = replace(changed, deleted=current.deleted or changed.deleted)
        self._index[thread_id] = changed
        self._dirty.add(thread_id)
        return changed

    async def search_messages(self, text: str) -> set[str]:
        needle = text.casefold()
        return {
            key[0]
            for key, writes in list(self.saver.writes.items())
            for w in writes.values()
            if w[1] == "messages" and folded_contains(w[2][1], needle)
        }

    async def delete_thread(self, thread_id: str) -> None:
        await self.saver.adelete_thread(thread_id)
        for key in [k for k in self._outbox if k[0] == thread_id]:
            del self._outbox[key]

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------------------------
# Postgres


@dataclass(frozen=True)
class PostgresTarget:
    """Where and how to connect; the password comes from the keyring, never from the stored URL."""

    url: str
    password: str | None = field(default=None, repr=False)  # compared (a new password is a new target), never shown
    pool_size: int = 5
    connect_timeout: float = 5.0
    prefer_async: bool = True
    device: str = ""
    """This data folder's device id: sent as the connections' application_name, so Postgres's triggers record
    which device wrote a change and a device ignores the echo of its own."""

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": None,
            "row_factory": dict_row,
            # libpq counts whole seconds and treats anything below 2 as 2; our own bound is the exact one.
            "connect_timeout": max(2, math.ceil(self.connect_timeout)),
            "application_name": schema.APP_NAME_PREFIX + self.device,
        }
        if self.password:
            kwargs["password"] = self.password
        return kwargs


def async_allowed(loop: asyncio.AbstractEventLoop) -> bool:
    """psycopg's async mode needs a selector loop (it refuses Windows' proactor loop)."""
    return isinstance(loop, asyncio.SelectorEventLoop)


class PostgresBackend(Backend):
    tier = "postgres"

    def __init__(
        self,
        saver: BaseCheckpointSaver[str],
        pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] | ConnectionPool[psycopg.Connection[DictRow]],
        *,
        is_async: bool,
    ) -> None:
        self.saver = saver
        self.pool = pool
        self.is_async = is_async

    @property
    def mode(self) -> str:
        return "async" if self.is_async else "sync"

    @classmethod
    async def open(cls, target: PostgresTarget) -> PostgresBackend:
        """Connect once (fails fast on a refused port, within the timeout on a silent host), set up, open a pool.
        A URL that can never work raises ValueError (not an environment error: retrying will not help)."""
        check_postgres_url(target.url)
        kwargs = target.connect_kwargs()
        try:
            async with asyncio.timeout(target.connect_timeout):
                probe = await psycopg.AsyncConnection.connect(target.url, **kwargs)
        except TimeoutError:
            raise TimeoutError(f"the server did not answer within {target.connect_timeout:.1f} s") from None
        try:
            async with asyncio.timeout(max(30.0, target.connect_timeout * 3)):
                await AsyncPostgresSaver(probe).setup()
                await _migrate_postgres(probe)
        finally:
            await probe.close()
        opening = target.connect_timeout + 0.5
        common: dict[str, Any] = {
            "min_size": 1,
            "max_size": target.pool_size,
            "kwargs": kwargs,  # rows as dicts (connect_kwargs), as LangGraph's savers expect
            "open": False,
            "timeout": target.connect_timeout,
            "name": "cairn",
        }
        if target.prefer_async and async_allowed(asyncio.get_running_loop()):
            async_pool = AsyncConnectionPool(
                target.url,
                connection_class=psycopg.AsyncConnection[DictRow],
                check=AsyncConnectionPool.check_connection,
                **common,
            )
            await async_pool.open(wait=True, timeout=opening)
            return cls(AsyncPostgresSaver(async_pool), async_pool, is_async=True)
        pool = ConnectionPool(
            target.url, connection_class=psycopg.Connection[DictRow], check=ConnectionPool.check_connection, **common
        )
        await asyncio.to_thread(pool.open, wait=True, timeout=opening)
        return cls(ThreadedSaver(PostgresSaver(pool)), pool, is_async=False)

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if isinstance(self.pool, AsyncConnectionPool):
            async with self.pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall()

        def run() -> list[dict[str, Any]]:
            assert isinstance(self.pool, ConnectionPool)
            with self.pool.connection() as conn:
                return conn.execute(sql, params).fetchall()

        return await asyncio.to_thread(run)

    async def _execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if isinstance(self.pool, AsyncConnectionPool):
            async with self.pool.connection() as conn, conn.cursor() as cursor:
                await cursor.executemany(sql, params)
            return

        def run() -> None:
            assert isinstance(self.pool, ConnectionPool)
            with self.pool.connection() as conn, conn.cursor() as cursor:
                cursor.executemany(sql, params)

        await asyncio.to_thread(run)

    async def probe(self) -> None:
        # Not just "SELECT 1": the pool reconnects silently, also to an empty database that replaced ours at the
        # same URL; asking for one of our tables finds that out (UndefinedTable loses the tier: setup runs again).
        await self._fetch("SELECT 1 FROM cairn_migrations LIMIT 1")

    @staticmethod
    async def probe_fresh(target: PostgresTarget) -> None:
        """``probe`` on a new connection of its own. The pool, asked for a connection while the server is gone,
        keeps trying to reconnect for its whole timeout (the connect timeout, 5 s by default) even when each attempt
        is refused at once; a connection of our own fails as fast as the network says no."""
        async with asyncio.timeout(target.connect_timeout):
            conn = await psycopg.AsyncConnection.connect(target.url, **target.connect_kwargs())
        try:
            async with asyncio.timeout(target.connect_timeout):
                await conn.execute("SELECT 1 FROM cairn_migrations LIMIT 1")
        finally:
            await conn.close()

    async def changes_since(self, seq: int) -> list[tuple[str, int, str]]:
        """(thread, position, writing device) of the threads changed after position ``seq``, in order."""
        rows = await self._fetch(
            "SELECT thread_id, seq, device FROM cairn_changes WHERE seq > %s ORDER BY seq", (seq,)
        )
        return [(r["thread_id"], int(r["seq"]), r["device"]) for r in rows]

    async def leaves(self, thread_id: str) -> set[str]:
        rows = await self._fetch(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' EXCEPT "
            "SELECT parent_checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''",
            (thread_id, thread_id),
        )
        return {r["checkpoint_id"] for r in rows}

    async def change_position(self) -> int:
        """The newest position of the change log (0 when nothing changed yet)."""
        rows = await self._fetch("SELECT coalesce(max(seq), 0) AS seq FROM cairn_changes")
        return int(rows[0]["seq"])

    @property
    def postgres_saver(self) -> BasePostgresSaver:
        """LangGraph's saver itself (in sync mode the one ``ThreadedSaver`` runs), for its row helpers."""
        inner = self.saver.inner if isinstance(self.saver, ThreadedSaver) else self.saver
        assert isinstance(inner, BasePostgresSaver)
        return inner

    @contextlib.asynccontextmanager
    async def uploader(self) -> AsyncIterator[Callable[[Sequence[StoredCheckpoint]], Awaitable[None]]]:
        """A function storing batches of checkpoints, each in one transaction and one round trip.

        Async mode holds one connection for all the batches, taken at the first one (each checkout costs the pool's
        check, a round trip). Sync mode takes one per batch, in the worker thread that sends it: a thread cannot
        be stopped, so it must own what it uses.
        """
        saver = self.postgres_saver
        pool = self.pool
        if isinstance(pool, AsyncConnectionPool):
            async with contextlib.AsyncExitStack() as stack:
                conn: psycopg.AsyncConnection[Any] | None = None

                async def put(batch: Sequence[StoredCheckpoint]) -> None:
                    nonlocal conn
                    rows = await asyncio.to_thread(upload.postgres_rows, saver, batch)
                    current = conn if conn is not None else await stack.enter_async_context(pool.connection())
                    conn = current
                    await upload.aput_rows(current, rows)

                yield put
            return

        def send(batch: Sequence[StoredCheckpoint]) -> None:
            rows = upload.postgres_rows(saver, batch)
            with pool.connection() as conn:
                upload.put_rows(conn, rows)

        async def put_in_thread(batch: Sequence[StoredCheckpoint]) -> None:
            await asyncio.to_thread(send, batch)

        yield put_in_thread

    async def checkpoint_keys(self, thread_id: str | None = None) -> set[Key]:
        where, params = ("WHERE thread_id = %s", (thread_id,)) if thread_id is not None else ("", ())
        rows = await self._fetch(f"SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints {where}", params)
        return {(r["thread_id"], r["checkpoint_ns"], r["checkpoint_id"]) for r in rows}

    async def write_keys(self, thread_id: str | None = None) -> set[WriteKey]:
        where, params = ("WHERE thread_id = %s", (thread_id,)) if thread_id is not None else ("", ())
        rows = await self._fetch(
            f"SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM checkpoint_writes {where}", params
        )
        return {(r["thread_id"], r["checkpoint_ns"], r["checkpoint_id"], r["task_id"], r["idx"]) for r in rows}

    async def task_paths(self, key: Key) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT DISTINCT task_id, task_path FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_ns = %s "
            "AND checkpoint_id = %s",
            key,
        )
        return {r["task_id"]: r["task_path"] for r in rows}

    async def conversations(self) -> list[Conversation]:
        rows = await self._fetch(f"SELECT {schema.INDEX_COLUMNS} FROM cairn_conversations")
        return [row_to_conversation(tuple(r.values())) for r in rows]

    async def conversation(self, thread_id: str) -> Conversation | None:
        rows = await self._fetch(
            f"SELECT {schema.INDEX_COLUMNS} FROM cairn_conversations WHERE thread_id = %s", (thread_id,)
        )
        return row_to_conversation(tuple(rows[0].values())) if rows else None

    async def merge_conversations(self, rows: Sequence[Conversation], *, dirty: bool = False) -> None:
        if not rows:
            return
        await self._execute_many(
            f"""INSERT INTO cairn_conversations AS cur ({schema.INDEX_COLUMNS})
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (thread_id) DO UPDATE SET
              title = CASE WHEN {_THEIRS_WIN_PG} THEN excluded.title ELSE cur.title END,
              model = CASE WHEN {_THEIRS_WIN_PG} THEN excluded.model ELSE cur.model END,
              pinned = CASE WHEN {_THEIRS_WIN_PG} THEN excluded.pinned ELSE cur.pinned END,
              created = CASE WHEN excluded.created > 0 AND (cur.created = 0 OR excluded.created < cur.created)
                             THEN excluded.created ELSE cur.created END,
              updated = greatest(cur.updated, excluded.updated),
              meta_changed = greatest(cur.meta_changed, excluded.meta_changed),
              deleted = cur.deleted OR excluded.deleted""",
            [(c.thread_id, c.title, c.model, c.created, c.updated, c.meta_changed, c.pinned, c.deleted) for c in rows],
        )

    async def search_messages(self, text: str) -> set[str]:
        params: list[str | bytes]
        if text.isascii():
            # In encode(.., 'escape') every ASCII byte but NUL and the backslash stands for itself: lower() folds it.
            where, params = "position(lower(%s) in lower(encode(blob, 'escape'))) > 0", [_escape_bytea(text.encode())]
        else:
            # Postgres cannot fold the case of bytes that are not text: look for the ways a word is usually written.
            variants = sorted({text, text.casefold(), text.lower(), text.upper(), text.capitalize(), text.title()})
            where = "(" + " OR ".join(["position(%s::bytea in blob) > 0"] * len(variants)) + ")"
            params = [v.encode() for v in variants]
        rows = await self._fetch(
            f"SELECT DISTINCT thread_id FROM checkpoint_writes WHERE channel = 'messages' AND {where}", params
        )
        return {r["thread_id"] for r in rows}

    async def close(self) -> None:
        try:
            if isinstance(self.pool, AsyncConnectionPool):
                await self.pool.close(timeout=1.0)
            else:
                await asyncio.to_thread(self.pool.close, 1.0)
        except Exception as exc:
            if not is_environment_error(exc):
                raise
            # Closing a pool to a dead server must not stop a tier change.
            log.debug("closing the Postgres pool: %s", describe(exc))


async def _migrate_postgres(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        await conn.execute(schema.POSTGRES_MIGRATION_LOCK)
        await conn.execute(schema.POSTGRES_MIGRATIONS_TABLE)
        cursor = await conn.execute("SELECT coalesce(max(v), -1) AS v FROM cairn_migrations")
        row = await cursor.fetchone()
        version = int(row["v"]) if row else -1
        for v in range(version + 1, len(schema.POSTGRES_MIGRATIONS)):
            await conn.execute(schema.POSTGRES_MIGRATIONS[v])
            await conn.execute("INSERT INTO cairn_migrations (v) VALUES (%s)", (v,))
        await conn.execute(schema.POSTGRES_RECONCILE_INDEX)
