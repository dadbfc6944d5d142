"""The storage runtime: which tier takes a write, the Postgres health monitor, the sync task, tier events.

Writes land in the local tier first (SQLite), so a turn never waits on the network; a background task copies what
Postgres lacks as soon as it answers and brings down what only Postgres has. When SQLite cannot be used, Postgres
is written directly; when neither can, memory. An environment error moves the tier and the write is retried on the
next one; any other error is a bug and reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from storage import changes as _changes
from storage import clock, listen, local, sync
from storage.backends import (
    Backend,
    Conversation,
    LocalBackend,
    MemoryBackend,
    PostgresBackend,
    PostgresTarget,
    SqliteBackend,
)
from storage.cache import CheckpointCache
from storage.changes import Changes
from storage.conversations import listed
from storage.errors import CANT_REACH, describe, is_environment_error, plain_words, refusal
from storage.schema import APP_NAME_PREFIX
from storage.secrets import mask_secrets, mask_url
from storage.status import (
    INVALID_URL,
    NOT_CONFIGURED,
    SWITCHED_OFF,
    StorageStatus,
    TierEvent,
    TierName,
    TierState,
    TierStatus,
)

log = logging.getLogger("cairn.storage")

T = TypeVar("T")
B = TypeVar("B", bound=Backend)
Listener = Callable[[StorageStatus, TierEvent | None], None]
ChangeListener = Callable[[Changes], None]

FIRST_RETRY_SECONDS = 0.25
PROBE_INTERVAL_SECONDS = 5.0
RECONCILE_INTERVAL_SECONDS = 30.0
"""While the LISTEN connection works: how often the change log is read anyway (a lost notification)."""
POLL_FALLBACK_SECONDS = 2.0
"""While it does not (connecting, cut, a pooler that drops notifications): how often the change log is read."""
POLL_LOOKBACK = 1000
"""Change-log positions are taken when a transaction writes but become visible when it commits, possibly out of
order: each poll reads this many positions back and pulls only threads whose position moved."""
LISTEN_CHECK_SECONDS = 5.0
"""How often an idle LISTEN connection is asked whether it still answers."""
LISTEN_UNAVAILABLE_RETRY_SECONDS = 300.0
"""After a server that drops notifications: how long to poll before trying LISTEN again."""
WATCH_SECONDS = 0.5
LOCAL_CHECK_SECONDS = 2.0
"""How often the local file is checked: still there, still the same file; writable again after a failure."""
WRITES_SETTLE_SECONDS = 5.0
SETTLE_TURNS = 5
"""How often the local file is asked whether another process wrote to it (``PRAGMA data_version``)."""
# A turn writes several checkpoints a few milliseconds apart. The sync and the pending count start once writes
# have paused this long (or this long at most after the first), so they do not read SQLite, take its lock and the
# GIL in the middle of a turn: measured in bench/storage.py, that contention made a short turn 1.9x slower.
WRITE_QUIET_SECONDS = 0.05
WRITE_QUIET_MAX_SECONDS = 0.5
# The server answered and refused the login (wrong password, no such user or database): that will not change by
# itself within seconds, and a wrong password sent every few seconds fills the server's log or locks the account.
# Retry now, or new settings, try at once.
REJECTED_RETRY_SECONDS = 60.0


class StorageManager:
    """Owns the backends and decides, for every call, where it goes."""

    def __init__(
        self,
        *,
        data_dir: Path | None,
        postgres: PostgresTarget | None = None,
        postgres_reason: str = "",
        retry_max_seconds: float = 5.0,
        reconcile_interval: float = RECONCILE_INTERVAL_SECONDS,
        keyring_name: str = "",
        refused_retry_seconds: float = REJECTED_RETRY_SECONDS,
        live: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.live = live  # listen for other devices' changes; False polls the change log only (a baseline)
        self.refused_retry_seconds = refused_retry_seconds
        self.target = postgres
        self.retry_max_seconds = retry_max_seconds
        self.reconcile_interval = reconcile_interval
        self.keyring_name = keyring_name
        self.sqlite: SqliteBackend | None = None
        self.sqlite_failed = ""  # why SQLite takes no writes; empty while it works
        self.sqlite_cause = ""  # the same in words for people ("the disk is full")
        self.memory = MemoryBackend()
        self.remote: PostgresBackend | None = None
        self.cache = CheckpointCache()
        self._data_version: int | None = None  # SQLite's, when the cache last looked (see cached)
        self._postgres = TierStatus(
            "off", postgres_reason or "no Postgres URL is configured", cause=_off_words(postgres_reason)
        )
        self._pending = 0
        self._pending_rows = 0  # of them, index rows
        self._last_sync_error = ""
        self._homes: dict[str, set[str]] = {}
        self._listeners: list[Listener] = []
        self._change_listeners: list[ChangeListener] = []
        self.device = secrets.token_hex(8)  # this data folder's, once SQLite is open (see start)
        self._listening = ""  # "" until the LISTEN connection works; then "listening"
        self._live_reason = "not connected"  # why changes from other devices are polled, not heard
        self._listen_wake = asyncio.Event()
        self._live_known = asyncio.Event()  # the listener has connected, or said why not, since Postgres came
        self._pull: set[str] = set()  # threads another device changed, to bring down
        self._poll_due = False
        self._change_cursor = 0  # the Postgres change log position read up to
        self._change_seen: dict[str, int] = {}  # thread -> its change log position when last pulled or written here
        self._local_cursor = 0  # the same for the local file's change log (another process on this data folder)
        self._held: dict[str, asyncio.Event] = {}  # threads being brought down: set when done
        self._inflight = 0  # writes under way (a local tier being replaced waits for them)
        self._writes_idle = asyncio.Event()
        self._notice = ""  # the last thing that happened to the user's words that they must hear of, in words
        self._active: TierName = "memory"
        self._tasks: list[asyncio.Task[Any]] = []
        self._retry = asyncio.Event()
        self._remote_lost = asyncio.Event()
        self._sync_wake = asyncio.Event()
        self._count_wake = asyncio.Event()
        self._count_lock = asyncio.Lock()  # counts finish in the order they started: the last word is the newest
        self._reconcile_due = True
        self._first_attempt = asyncio.Event()
        self._closed = False
        # One sync round at a time (the loop's or sync_now's), and which remote each running round talks to, so
        # losing that remote can abandon it (the future is set when it is lost).
        self._sync_lock = asyncio.Lock()
        self._rounds: dict[asyncio.Future[Any], tuple[PostgresBackend, asyncio.Future[None]]] = {}

    # --- life -----------------------------------------------------------------------------------------------
    async def start(self, *, wait_for_postgres: bool = False) -> None:
        """Open SQLite, start the Postgres monitor and the sync task; return without waiting on the network
        unless ``wait_for_postgres`` (the doctor), which waits for the first attempt (bounded by its timeout)."""
        if self.data_dir is None:
            self.sqlite_failed = "no data directory is configured"
            self.sqlite_cause = "no data folder is set"
        else:
            try:
                self.sqlite = await SqliteBackend.open(self.data_dir)
            except Exception as exc:
                if not is_environment_error(exc):
                    raise
                self.sqlite_failed = f"cannot use {self.data_dir}: {describe(exc)}"
                self.sqlite_cause = plain_words(exc)
                log.error("SQLite unavailable: %s", self.sqlite_failed)
        clock.check_lever()
        if self.sqlite is not None:
            self._data_version = await self.read(self.sqlite, lambda b: b.data_version())
            self.device = await self.sqlite.device_id()
            clock.observe(await self.sqlite.newest_checkpoint_id())
            self._local_cursor = max((seq for _t, seq in await self.sqlite.changes_since(0)), default=0)
        self._active = self._compute_active()
        if self.target is not None:
            self.target = replace(self.target, device=self.device)
            self._postgres = TierStatus(
                "connecting", f"connecting to {mask_url(self.target.url)}", cause="Connecting to the server"
            )
            self._spawn(self._health_loop(), "cairn-postgres-health")
            if self.live:
                self._spawn(self._listen_loop(), "cairn-postgres-listen")
            else:
                self._live_reason = "listening is switched off"
        else:
            self._first_attempt.set()
        self._spawn(self._sync_loop(), "cairn-sync")
        self._spawn(self._count_loop(), "cairn-pending-count")
        if self.data_dir is not None:
            self._spawn(self._watch_loop(), "cairn-watch-local")
        self._sync_wake.set()
        if wait_for_postgres:
            await self._first_attempt.wait()
        log.info("storage started: active tier %s", self._active)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        """A background task ended. Only close() ends them: anything else is a bug, which must not pass in silence."""
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        log.error("storage task %s stopped", task.get_name(), exc_info=exc)
        self._last_sync_error = f"{task.get_name()} stopped: {describe(exc) if exc else 'ended'}"
        self._changed(None)

    async def close(self) -> None:
        await self.writes_settled(WRITES_SETTLE_SECONDS)
        self._closed = True
        reported = {task for task in self._tasks if task.done()}  # a failure of these was logged when it happened
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                # Closing goes on (the files must be closed whatever happened), but a bug is not passed over.
                if task not in reported and not is_environment_error(exc):
                    log.error("storage task %s failed while closing", task.get_name(), exc_info=exc)
        self._tasks.clear()
        if self.remote is not None:
            await self.remote.close()
            self.remote = None
        if self.sqlite is not None:
            await self.sqlite.close()

    # --- routing --------------------------------------------------------------------------------------------
    def write_target(self) -> Backend:
        if self.sqlite is not None and not self.sqlite_failed:
            return self.sqlite
        if self.remote is not None:
            return self.remote
        return self.memory

    def read_targets(self, thread_id: str | None) -> list[Backend]:
        """Where to look for a thread: the current tier, then any other tier this session wrote it to."""
        primary = self.write_target()
        homes = self._homes.get(thread_id or "", set())
        others = [
            b
            for b in (self.memory, self.sqlite, self.remote)
            if b is not None and b is not primary and b.tier in homes
        ]
        # A local file that takes no writes (full, read-only) may still answer reads: what it held stays readable.
        if self.sqlite is not None and self.sqlite_failed and self.sqlite is not primary and self.sqlite not in others:
            others.append(self.sqlite)
        return [primary, *others]

    async def cached(self, thread_id: str, *, latest: bool) -> CheckpointCache | None:
        """The cache, when it may answer a read of ``thread_id``: the thread lives in SQLite only. (It mirrors what
        the SQLite saver answers; the memory saver rebuilds a checkpoint's values from its blobs, which answers
        differently, and Postgres is written by other machines too.) ``latest``: the read asks for the newest
        checkpoint, which another process writing the same file (a second Cairn on one data folder) may have
        changed; SQLite's ``data_version`` tells, and everything cached is dropped if it did."""
        sqlite = self.sqlite
        if sqlite is None or self.sqlite_failed or self.read_targets(thread_id) != [sqlite]:
            return None
        if latest:
            version = await self.read(sqlite, lambda b: b.data_version())
            if version is None:  # SQLite failed just now
                return None
            if version != self._data_version:
                self._data_version = version
                self.cache.clear()
        return self.cache

    async def write(self, thread_id: str, op: Callable[[Backend], Awaitable[T]]) -> T:
        """Run a write on the current tier; on an environment error move down a tier and write there."""
        while True:
            backend = self.write_target()
            self._inflight += 1
            try:
                result = await op(backend)
            except Exception as exc:
                # Once closed, a failing file is no reason to move: it was closed on purpose, and a write moved to
                # memory now would be lost at exit in silence. Whoever still writes is told (a bug).
                if backend is self.memory or not is_environment_error(exc) or self._closed:
                    raise
                self._fail(backend, exc)
                continue
            finally:
                self._inflight -= 1
                if not self._inflight:
                    self._writes_idle.set()
            self._homes.setdefault(thread_id, set()).add(backend.tier)
            if backend is not self.remote:
                self._sync_wake.set()
                self._count_wake.set()
            return result

    @contextlib.asynccontextmanager
    async def holding(self, threads: set[str]) -> AsyncIterator[None]:
        """Mark ``threads`` as being brought down from Postgres: ``settled`` waits until they are complete."""
        done = asyncio.Event()
        mine = {t for t in threads if t not in self._held}
        for thread_id in mine:
            self._held[thread_id] = done
        try:
            yield
        finally:
            for thread_id in mine:
                del self._held[thread_id]
            done.set()

    async def settled(self, thread_id: str) -> None:
        """Wait while ``thread_id`` is being brought down (a read now would see it half-copied)."""
        while (held := self._held.get(thread_id)) is not None:
            await held.wait()

    # --- the change feed ------------------------------------------------------------------------------------
    def subscribe_changes(self, listener: ChangeListener) -> Callable[[], None]:
        """Hear of every change to what the user can see (see ``storage.changes``)."""
        self._change_listeners.append(listener)
        return lambda: self._change_listeners.remove(listener)

    def emit(self, change: Changes) -> None:
        """Tell every listener; what came from elsewhere also leaves the cache (it mirrors SQLite as written here)."""
        if not change:
            return
        if change.source != "local":
            for thread_id in change.threads:
                self.cache.forget(thread_id)
        for listener in list(self._change_listeners):
            try:
                listener(change)
            except Exception:
                log.exception("storage change listener failed")

    async def read(self, backend: B, op: Callable[[B], Awaitable[T]]) -> T | None:
        """Run a read; an environment error fails that tier (the caller tries the next) and gives None."""
        try:
            return await op(backend)
        except Exception as exc:
            if backend is self.memory or not is_environment_error(exc) or self._closed:
                raise
            self._fail(backend, exc)
            return None

    def _fail(self, backend: Backend, exc: BaseException, cause: str = "") -> None:
        self.cache.bump()  # a read in flight may have found nothing because of this, not because nothing is there
        reason = mask_secrets(describe(exc))
        cause = cause or plain_words(exc)
        if backend is self.remote:
            self._lose_remote(reason, cause=cause)
        elif backend is self.sqlite and not self.sqlite_failed:
            self.sqlite_failed = reason
            self.sqlite_cause = cause
            where = "on the server only" if self.remote is not None else "in memory only, until it works again"
            self._notice = f"This computer's copy cannot be written ({cause}): your words are kept {where}."
            log.error("SQLite failed, writing to the next tier: %s", reason)
            self._changed(reason)

    # --- conversation index ---------------------------------------------------------------------------------
    async def conversations(self) -> list[Conversation]:
        """The conversation list (tombstones left out), newest activity first, pinned first."""
        rows: dict[str, Conversation] = {}
        for backend in reversed(self.read_targets(None)):
            for row in await self.read(backend, lambda b: b.conversations()) or []:
                current = rows.get(row.thread_id)
                rows[row.thread_id] = row if current is None else sync_merge(current, row)
        if self.memory is not self.write_target():
            for row in await self.memory.conversations():
                rows[row.thread_id] = sync_merge(rows[row.thread_id], row) if row.thread_id in rows else row
        return listed(rows.values())

    async def conversation(self, thread_id: str) -> Conversation | None:
        """One row of the list, as ``conversations`` has it (None when it is not listed), read alone."""
        found: Conversation | None = None
        for backend in reversed(self.read_targets(None)):
            row = await self.read(backend, lambda b: b.conversation(thread_id))
            if row is not None:
                found = row if found is None else sync_merge(found, row)
        if self.memory is not self.write_target():
            row = await self.memory.conversation(thread_id)
            if row is not None:
                found = row if found is None else sync_merge(found, row)
        return found if found is not None and not found.deleted else None

    async def leaves(self, thread_id: str) -> set[str]:
        """The newest checkpoint of each branch of a thread, in every tier that holds it now. Branches come from
        an edit or a regenerate, and from two devices that continued a conversation apart: all are kept."""
        found: set[str] = set()
        for backend in self.read_targets(thread_id):
            found |= await self.read(backend, lambda b: b.leaves(thread_id)) or set()
        return found

    async def search_messages(self, text: str) -> set[str]:
        """Threads with a message containing ``text``, in every tier that holds conversations now."""
        hits: set[str] = set()
        for backend in self.read_targets(None):
            hits |= await self.read(backend, lambda b: b.search_messages(text)) or set()
        if self.memory is not self.write_target():
            hits |= await self.memory.search_messages(text)
        return hits

    async def update_conversation(self, thread_id: str, **changes: Any) -> Conversation:
        target = self.write_target()
        if isinstance(target, LocalBackend):
            row = await self.write(thread_id, lambda b: _update_local(b, thread_id, changes))
        else:
            current = next((c for c in await target.conversations() if c.thread_id == thread_id), None)
            now = time.time()
            base = current or Conversation(thread_id, created=now, updated=now)
            row = replace(base, **changes, meta_changed=max(now, base.meta_changed + 1e-6))
            await self.write(thread_id, lambda b: b.merge_conversations([row]))
        self._changed(None)
        self.emit(_changes.of(index=[thread_id]))
        return row

    async def delete_thread(self, thread_id: str) -> None:
        """Delete everywhere reachable now and leave a tombstone, so the deletion syncs and nothing comes back."""
        for backend in (self.sqlite, self.memory):
            if backend is not None and (backend is not self.sqlite or not self.sqlite_failed):
                try:
                    await backend.delete_thread(thread_id)
                except Exception as exc:
                    if not is_environment_error(exc):
                        raise
                    # The tombstone below still goes wherever writes go now, so the deletion is not lost.
                    log.warning("deleting %s from %s: %s", thread_id, backend.tier, describe(exc))
        await self.update_conversation(thread_id, deleted=True)
        if self.write_target() is self.remote and self.remote is not None:
            await self.write(thread_id, lambda b: b.delete_thread(thread_id))
        self._homes.pop(thread_id, None)
        self.cache.forget(thread_id)
        self._sync_wake.set()
        self.emit(_changes.of(removed=[thread_id]))

    # --- status ---------------------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def status(self) -> StorageStatus:
        sqlite_detail: dict[str, Any] = {"path": str(self.sqlite.path) if self.sqlite else ""}
        if self.sqlite is not None and self.sqlite.note:
            sqlite_detail["note"] = self.sqlite.note
        if self.sqlite is None or self.sqlite_failed:
            sqlite = TierStatus("failed", self.sqlite_failed, sqlite_detail, cause=self.sqlite_cause)
        else:
            state: TierState = "active" if self.write_target() is self.sqlite else "standby"
            sqlite = TierStatus(state, self.sqlite.note or "", sqlite_detail)
        memory_state: TierState = "active" if self.write_target() is self.memory else "standby"
        memory_reason = "nothing is being saved: no durable storage works" if memory_state == "active" else ""
        postgres = self._postgres
        if self.remote is not None:
            live = "listening" if self._listening else f"polling every {POLL_FALLBACK_SECONDS:g} s: {self._live_reason}"
            postgres = replace(postgres, detail={**postgres.detail, **self._pool_stats(self.remote), "live": live})
        return StorageStatus(
            active_tier=self._active,
            tiers={"postgres": postgres, "sqlite": sqlite, "memory": TierStatus(memory_state, memory_reason)},
            pending_sync=self._pending if self.target is not None else 0,  # nothing to sync to
            postgres_url=mask_url(self.target.url) if self.target else "",
            data_dir=str(self.data_dir or ""),
            keyring=self.keyring_name,
            last_sync_error=self._last_sync_error,
            notice=self._notice,
            pending_conversations=self._pending_rows if self.target is not None else 0,
        )

    def retry_now(self) -> None:
        """Try Postgres again at once (the badge's Retry now) and run a full sync if it answers."""
        self._reconcile_due = True
        self._retry.set()
        self._sync_wake.set()

    async def sync_now(self) -> sync.SyncReport:
        """A full comparison and sync with Postgres, now; an empty report when Postgres is not connected.

        Losing Postgres (or SQLite) on the way changes the tier, as any failed call does, and ends the sync (the
        report then counts only what finished); a programming error is raised.
        """
        report = sync.SyncReport()
        async with self._sync_lock:
            remote = self.remote  # read under the lock: a round that held it may have lost the remote
            if remote is None:
                return report
            try:
                for local in self._locals():
                    part = await self._against(remote, sync.reconcile(local, remote, self.emit, self.holding))
                    report.uploaded += part.uploaded
                    report.downloaded += part.downloaded
                    report.deleted_threads += part.deleted_threads
                    report.index_rows += part.index_rows
                self._last_sync_error = ""
            except Exception as exc:
                if not is_environment_error(exc):
                    raise
                self._sync_failed(remote, exc)
        await self.refresh_pending()
        return report

    def _compute_active(self) -> TierName:
        target = self.write_target()
        if target is self.memory:
            return "memory"
        if self.remote is not None:
            return "postgres"
        return "sqlite"

    def _changed(self, reason: str | None) -> None:
        previous, self._active = self._active, self._compute_active()
        event = None
        if previous != self._active:
            why = reason or self.status().reason
            event = TierEvent(previous, self._active, why, time.time())
            log.warning("storage tier %s -> %s: %s", previous, self._active, why)
        status = self.status()
        for listener in list(self._listeners):
            try:
                listener(status, event)
            except Exception:
                log.exception("storage listener failed")

    def _pool_stats(self, remote: PostgresBackend) -> dict[str, Any]:
        pool = {k: v for k, v in remote.pool.get_stats().items() if not k.startswith("connections_")}
        return {"mode": remote.mode, "pool": pool}

    # --- Postgres health ------------------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        assert self.target is not None
        delay = FIRST_RETRY_SECONDS
        while not self._closed:
            if self.remote is None:
                self._retry.clear()  # this attempt answers every Retry now so far; one pressed during it asks again
                try:
                    backend = await PostgresBackend.open(self.target)
                except Exception as exc:
                    reason = mask_secrets(describe(exc))
                    if not is_environment_error(exc):
                        log.exception("Postgres setup failed")
                        self._postgres = TierStatus("failed", reason, cause=_setup_words(exc))
                        self._first_attempt.set()
                        self._changed(reason)
                        # A bug, or settings libpq rejects: no retry on a timer, but Retry now must still try.
                        await self._retry.wait()
                        continue
                    wait = delay
                    detail: dict[str, Any] = {}
                    refused = refusal(exc)
                    if refused is not None:
                        reason = f"{reason} ({refused.hint})"
                        wait = max(delay, self.refused_retry_seconds)
                        detail["refused"] = refused.kind
                    self._postgres = TierStatus(
                        "down", reason, {"retry_in": round(wait, 2), **detail}, cause=plain_words(exc)
                    )
                    self._first_attempt.set()
                    self._changed(reason)
                    await self._pause(self._retry, wait)
                    delay = min(delay * 2, self.retry_max_seconds)
                    continue
                self.remote = backend
                delay = FIRST_RETRY_SECONDS
                self._postgres = TierStatus("connected", "", {"mode": backend.mode})
                self._reconcile_due = True
                self._remote_lost.clear()
                self._listen_wake.set()
                log.info("Postgres connected (%s) at %s", backend.mode, mask_url(self.target.url))
                self._first_attempt.set()
                self._changed("Postgres is reachable")
                self._sync_wake.set()
                continue
            # Woken: the remote was lost, or the LISTEN connection failed (a server that stops closes it at once).
            woken = await self._pause(self._remote_lost, PROBE_INTERVAL_SECONDS)
            remote = self.remote
            if remote is None:
                continue
            try:
                probe = self._probe_fresh(remote) if woken else remote.probe()
                await self._within(probe, self.target.connect_timeout + 0.5)
            except Exception as exc:
                if not is_environment_error(exc):
                    raise
                self._lose_remote(mask_secrets(describe(exc)), remote, cause=plain_words(exc))

    async def _within(self, work: Awaitable[None], seconds: float) -> None:
        """Run ``work``; raise TimeoutError after ``seconds`` without waiting for it to wind down.

        A probe cancelled on a network that stopped answering does not end when cancelled: psycopg first asks the
        server to cancel the query, over that same silent network, which takes its own timeouts. Awaited, that
        made a partition take about 19 s to show (5 s between probes, the 5.5 s bound, about 9 s of cancelling);
        left to finish in the background (``close`` awaits it), the bound is the bound."""
        task = asyncio.ensure_future(work)
        done, _pending = await asyncio.wait({task}, timeout=seconds)
        if task in done:
            task.result()
            return
        task.cancel()
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)
        raise TimeoutError(f"the server did not answer within {seconds:.1f} s")

    async def _probe_fresh(self, remote: PostgresBackend) -> None:
        """Is the server still there, asked on a connection of our own (the LISTEN connection just failed)?

        Through the pool, a stopped server would be found out only after the pool's timeout (it retries refused
        connections until then): the badge took 5 s or more to follow. A server that answers and refuses the login
        is not gone: it may be a database being replaced at the same URL, which the pool's own probe finds out
        (``probe``), as it does on the timer."""
        assert self.target is not None
        try:
            await PostgresBackend.probe_fresh(self.target)
        except Exception as exc:
            if refusal(exc) is None:
                raise
            await remote.probe()

    async def _pause(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass; True when the event woke us."""
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return False
        event.clear()
        return True

    async def _quiet(self, event: asyncio.Event) -> None:
        """After ``event`` woke us: wait until it stays unset for WRITE_QUIET_SECONDS (WRITE_QUIET_MAX_SECONDS at
        most), so a burst of writes is handled once, after it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITE_QUIET_MAX_SECONDS
        while (left := deadline - loop.time()) > 0 and await self._pause(event, min(WRITE_QUIET_SECONDS, left)):
            pass

    def _lose_remote(self, reason: str, which: PostgresBackend | None = None, *, cause: str = "") -> None:
        """Drop the remote (``which``, when the failure came from a known one: a stale failure of a remote the
        health loop has already replaced must not drop the new one) and cancel sync work still talking to it."""
        if which is not None and which is not self.remote:
            return
        remote, self.remote = self.remote, None
        if remote is None:
            return
        current = asyncio.current_task()
        for task, (used, lost) in list(self._rounds.items()):
            if used is remote and task is not current:
                task.cancel()
                if not lost.done():
                    lost.set_result(None)
        self._postgres = TierStatus("down", reason, {"retry_in": FIRST_RETRY_SECONDS}, cause=cause or CANT_REACH)
        log.warning("Postgres lost: %s", reason)
        task = asyncio.get_running_loop().create_task(remote.close())
        self._tasks.append(task)
        task.add_done_callback(self._closed_remote)
        self._remote_lost.set()
        self._listening = ""
        self._live_reason = "Postgres is not connected" if self.live else self._live_reason
        self._changed(reason)

    # --- sync -----------------------------------------------------------------------------------------------
    def _locals(self) -> list[LocalBackend]:
        locals_: list[LocalBackend] = []
        if self.sqlite is not None and not self.sqlite_failed:
            locals_.append(self.sqlite)
        if self.memory.saver.storage or self.memory._index:
            locals_.append(self.memory)
        return locals_

    async def refresh_pending(self) -> None:
        """Count what Postgres still lacks (the outbox, and index changes such as a deletion or a rename not yet
        uploaded) and tell the listeners if it changed."""
        total = rows = 0
        async with self._count_lock:
            for local in self._locals():
                try:
                    count = await local.pending_count()
                    dirty = len(await local.dirty_conversations())
                except Exception as exc:
                    if not is_environment_error(exc):
                        raise
                    # A file that cannot be read now (its tier shows why): what it holds is counted when it can be.
                    log.debug("counting what %s has to sync: %s", local.tier, describe(exc))
                    continue
                total += count + dirty
                rows += dirty
        if (total, rows) != (self._pending, self._pending_rows):
            self._pending, self._pending_rows = total, rows
            self._changed(None)

    async def _against(self, remote: PostgresBackend, work: Awaitable[T]) -> T:
        """Run sync work against ``remote`` in its own task, which losing that remote cancels.

        A connection that dies in silence (a partition, a dropped NAT mapping) leaves a query, or the pool's
        connection check, waiting until TCP gives up, about 15 minutes; without this the sync would stay stuck
        that long even after the health monitor has found Postgres again and promoted the tier.
        """
        task = asyncio.ensure_future(work)
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rounds[task] = (remote, lost)
        try:
            waiting: list[asyncio.Future[Any]] = [task, lost]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        finally:
            self._rounds.pop(task, None)
        if not task.done():
            # Cancelled, but psycopg first tries to cancel the query on the server, which on a dead network takes
            # its own timeouts (about 10 s): let it finish in the background (close() awaits it) and go on.
            self._tasks.append(task)
            task.add_done_callback(self._forget_task)
        if task.cancelled() or not task.done():
            raise ConnectionError("Postgres was lost during sync")
        return task.result()

    def _closed_remote(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("closing a lost Postgres connection failed", exc_info=exc)  # environment errors never get here

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned round's error was already answered by the tier change

    def _sync_failed(self, remote: PostgresBackend, exc: Exception) -> None:
        """An environment error during sync: fail the tier it came from."""
        if isinstance(exc, sqlite3.Error | ValueError):
            if self.sqlite is not None:
                self._fail(self.sqlite, exc)
        elif isinstance(exc, psycopg.Error | OSError | TimeoutError):
            self._lose_remote(mask_secrets(describe(exc)), remote, cause=plain_words(exc))

    async def _count_loop(self) -> None:
        """Recount what Postgres lacks after local writes, apart from the sync: while an upload runs (or hangs on
        a dead network) the status must count the writes made since, not the number from before them."""
        while not self._closed:
            await self._count_wake.wait()
            self._count_wake.clear()
            await self._quiet(self._count_wake)
            await self.refresh_pending()

    async def _sync_loop(self) -> None:
        while not self._closed:
            interval = self.reconcile_interval
            if not self._listening:
                interval = min(POLL_FALLBACK_SECONDS, interval)
            woke = await self._pause(self._sync_wake, interval)
            if woke:
                await self._quiet(self._sync_wake)
            else:
                self._poll_due = True
            async with self._sync_lock:
                remote = self.remote
                if remote is not None:
                    try:
                        await self._sync_round(remote)
                        self._last_sync_error = ""
                    except Exception as exc:
                        if not is_environment_error(exc):
                            log.exception("sync failed")
                            self._last_sync_error = describe(exc)
                        else:
                            self._sync_failed(remote, exc)
            await self.refresh_pending()

    async def _sync_round(self, remote: PostgresBackend) -> None:
        """One round: a full comparison when due (Postgres just came, Retry now), else bring down the threads other
        devices changed (heard, or found in the change log), then upload what is pending."""
        locals_ = self._locals()
        if self._reconcile_due:
            # Cleared before the work: a notification or a reconnect during it asks for another round.
            self._reconcile_due = self._poll_due = False
            self._pull.clear()
            try:
                position = await self._against(remote, remote.change_position())
                for local in locals_:
                    await self._against(remote, sync.reconcile(local, remote, self.emit, self.holding))
            except BaseException:
                self._reconcile_due = True
                raise
            if position < self._change_cursor:
                self._change_seen.clear()  # another server (or a restored one) behind the same URL
            self._change_cursor = position
            return
        threads, self._pull = self._pull, set()
        if self._poll_due:
            self._poll_due = False
            threads |= await self._against(remote, self._poll_changes(remote))
        left = set(threads) if locals_ else set()
        try:
            for thread_id in sorted(left):
                await self._against(remote, sync.pull_thread(locals_[0], remote, thread_id, self.emit, self.holding))
                left.discard(thread_id)
        finally:
            self._pull |= left  # not brought down yet: the next round tries again
        for local in locals_:
            await self._against(remote, sync.push(local, remote))

    async def _poll_changes(self, remote: PostgresBackend) -> set[str]:
        """Threads another device changed since the change log was last read (``POLL_LOOKBACK``)."""
        rows = await remote.changes_since(max(0, self._change_cursor - POLL_LOOKBACK))
        if not rows and self._change_cursor and await remote.change_position() < self._change_cursor:
            self._reconcile_due = True  # the log went back: another (or a restored) server at this URL
            self._sync_wake.set()
            return set()
        me = APP_NAME_PREFIX + self.device
        threads = set()
        for thread_id, seq, device in rows:
            if self._change_seen.get(thread_id) != seq:
                self._change_seen[thread_id] = seq
                if device != me:
                    threads.add(thread_id)
            self._change_cursor = max(self._change_cursor, seq)
        return threads

    async def live_settled(self, timeout: float) -> None:
        """Wait (``timeout`` at most) until the listener is listening or has said why not (the doctor's report)."""
        if self.remote is None or not self.live:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._live_known.wait()

    def _heard(self, thread_id: str) -> None:
        self._pull.add(thread_id)
        self._sync_wake.set()

    def _now_listening(self) -> None:
        self._listening = "listening"
        self._live_reason = ""
        self._live_known.set()
        self._poll_due = True  # what was sent while nobody listened is read from the change log
        self._sync_wake.set()
        self._changed(None)

    async def _listen_loop(self) -> None:
        """Keep one LISTEN connection open while Postgres is connected (``storage.listen``)."""
        assert self.target is not None
        delay = FIRST_RETRY_SECONDS
        while not self._closed:
            if self.remote is None:
                await self._listen_wake.wait()
                self._listen_wake.clear()
                continue
            target = self.target
            self._live_reason = "starting to listen"
            try:
                await listen.listen(target, self._heard, self._now_listening, check_every=LISTEN_CHECK_SECONDS)
            except listen.NotificationsUnavailable as exc:
                self._stop_listening(str(exc))
                await self._pause(self._retry, LISTEN_UNAVAILABLE_RETRY_SECONDS)
                continue
            except Exception as exc:
                if not is_environment_error(exc):
                    raise
                self._stop_listening(mask_secrets(describe(exc)))
                # The server may have gone (a restart, a replaced database): the pool would notice only at its next
                # use. Ask the health monitor to look now.
                self._remote_lost.set()
                await self._pause(self._retry, delay)
                delay = min(delay * 2, max(self.retry_max_seconds, FIRST_RETRY_SECONDS))
                continue
            delay = FIRST_RETRY_SECONDS

    def _stop_listening(self, reason: str) -> None:
        was = self._listening
        self._listening = ""
        self._live_reason = reason
        self._sync_wake.set()  # poll at the fallback cadence from now on
        self._live_known.set()
        if was:
            log.warning("stopped listening for changes: %s", reason)
            self._changed(None)

    async def _check_local(self) -> None:
        sqlite = self.sqlite
        if sqlite is not None:
            gone = await asyncio.to_thread(sqlite.file_state)
            if gone:
                await self._replace_local(sqlite, gone)
                return
        if self.sqlite is None or self.sqlite_failed:
            await self._recover_local()

    async def _writes_settled(self) -> None:
        """Wait (a little at most) for writes under way: one begun on the old tier may still be landing there."""
        await self.writes_settled(WRITES_SETTLE_SECONDS)

    async def writes_settled(self, timeout: float) -> None:
        """Wait until no write is under way, nor starts within a few turns of the loop (``timeout`` at most).

        LangGraph stores a run's checkpoints in background tasks, each after the one before it: a run that was
        stopped returns while they still land. What waits for them here: the service after a Stop, and ``close``
        (a write arriving after it would fail, and the user's message with it)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    while self._inflight:
                        self._writes_idle.clear()
                        await self._writes_idle.wait()
                    for _ in range(SETTLE_TURNS):
                        await asyncio.sleep(0)  # a chained save starts a turn of the loop after the one before ends
                    if not self._inflight:
                        return

    async def _replace_local(self, old: SqliteBackend, why: str) -> None:
        """The file was deleted or replaced under us: make a new one at the path holding everything still readable
        (the old connection goes on reading the unlinked file; memory holds what went there)."""
        assert self.data_dir is not None
        log.error("%s: making a new one with everything Cairn can still read", why)
        try:
            new = await SqliteBackend.open(self.data_dir)
            await new.set_device_id(self.device)
        except Exception as exc:
            if not is_environment_error(exc):
                raise
            self._fail(
                old,
                OSError(f"{why}, and a new one cannot be made there: {describe(exc)}"),
                cause=f"the file is gone and a new one cannot be made ({plain_words(exc)})",
            )
            return
        async with self._sync_lock:  # no sync round reads the old file while it is swapped
            threads: set[str] = set()
            was_failed = self.sqlite_failed
            for attempt in ("before", "after"):
                if attempt == "after":  # the new file takes writes now; copy what reached the old one meanwhile
                    self.sqlite, self.sqlite_failed = new, ""
                    await self._writes_settled()
                try:
                    threads |= await local.copy_all(old, new)
                except Exception as exc:
                    if not is_environment_error(exc):
                        raise
                    log.error("copying the old local file into the new one failed: %s", describe(exc))
            threads |= await self._drain_memory(new)
            await old.close()
        self._data_version = await self.read(new, lambda b: b.data_version())
        self._local_cursor = max((seq for _t, seq in await new.changes_since(0)), default=0)
        self.cache.clear()
        self._reconcile_due = True  # what only Postgres holds comes back down too
        self._sync_wake.set()
        self._count_wake.set()
        self._notice = f"{why}. A new one was made with everything Cairn still had: nothing was lost."
        new.note = self._notice
        if was_failed:
            log.info("the local tier is back")
        self.emit(_changes.of(index=threads, source="sync"))
        self._changed(self._notice)

    async def _recover_local(self) -> None:
        """SQLite failed (a full disk, a read-only folder, a file that could not be opened): try it again, and when
        it takes writes, write there what went to memory meanwhile and make it the tier again."""
        assert self.data_dir is not None
        sqlite = self.sqlite
        try:
            if sqlite is None:
                sqlite = await SqliteBackend.open(self.data_dir)
                await sqlite.set_device_id(self.device)
            else:
                await sqlite.probe_write()
        except Exception as exc:
            if not is_environment_error(exc):
                raise
            return  # still failing: the reason shown stays
        async with self._sync_lock:
            self.sqlite = sqlite
            try:
                threads = await self._drain_memory(sqlite, switch=True)
            except Exception as exc:
                if not is_environment_error(exc):
                    raise
                self._fail(sqlite, exc)
                return
        self._data_version = await self.read(sqlite, lambda b: b.data_version())
        self.cache.clear()
        self._reconcile_due = True  # what went to Postgres meanwhile comes down into the file
        self._sync_wake.set()
        self._count_wake.set()
        self._notice = "This computer's copy works again: everything written meanwhile is saved in it."
        log.info("SQLite takes writes again; %d conversations written meanwhile moved into it", len(threads))
        self.emit(_changes.of(index=threads, source="sync"))
        self._changed("the local database can be written again")

    async def take_over(self, old: StorageManager) -> set[str]:
        """Write into this storage what only ``old``'s memory holds (storage reopened with new settings, such as a
        data folder chosen while nothing was saved); the threads moved."""
        memory = old.memory
        if not (memory.saver.storage or memory._index):
            return set()
        target: LocalBackend = self.memory
        if self.sqlite is not None and not self.sqlite_failed:
            target = self.sqlite
        threads = await local.copy_all(memory, target)
        for thread_id in threads:
            self._homes.setdefault(thread_id, set()).add(target.tier)
        self.cache.clear()
        self._sync_wake.set()
        self._count_wake.set()
        self.emit(_changes.of(index=threads, source="sync"))
        return threads

    async def _drain_memory(self, sqlite: SqliteBackend, *, switch: bool = False) -> set[str]:
        """Write into ``sqlite`` what memory holds (in order, idempotently), then empty memory. ``switch``: make
        ``sqlite`` the write tier once it holds everything, then copy what landed in memory on the way."""
        memory = self.memory
        threads = await local.copy_all(memory, sqlite) if memory.saver.storage or memory._index else set()
        if switch:
            self.sqlite_failed = ""
            await self._writes_settled()
            threads |= await local.copy_all(memory, sqlite)
        if threads:
            self.memory = MemoryBackend()
            for homes in self._homes.values():
                homes.discard("memory")
        return threads

    async def _watch_loop(self) -> None:
        """Watch the local file as the health monitor watches Postgres (still there, still the same file, writable
        again after a failure), and notice another process's writes to it and tell the listeners what changed."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while not self._closed:
            await asyncio.sleep(WATCH_SECONDS)  # a polling interval: SQLite has no change notification
            if loop.time() - checked >= LOCAL_CHECK_SECONDS:
                await self._check_local()
                checked = loop.time()
            sqlite = self.sqlite
            if sqlite is None or self.sqlite_failed:
                continue
            version = await self.read(sqlite, lambda b: b.data_version())
            if version is None or version == self._data_version:
                continue
            self._data_version = version
            self.cache.clear()
            rows = await self.read(sqlite, lambda b: b.changes_since(self._local_cursor)) or []
            if not rows:
                continue
            self._local_cursor = max(seq for _t, seq in rows)
            threads = {t for t, _seq in rows}
            index = {c.thread_id: c for c in await sqlite.conversations() if c.thread_id in threads}
            removed = {t for t, c in index.items() if c.deleted}
            self.emit(_changes.of(turns=threads - removed, index=threads - removed, removed=removed, source="process"))
            self._sync_wake.set()  # the other process's turns are this device's to upload too
            self._count_wake.set()


def _off_words(reason: str) -> str:
    """Why no Postgres is used, in words (``storage.factory.postgres_target`` gives the technical reason)."""
    if reason.startswith("POSTGRES_DATABASE_URL is"):
        return INVALID_URL
    if "switched off" in reason:
        return SWITCHED_OFF
    return NOT_CONFIGURED


def _setup_words(exc: BaseException) -> str:
    """Why a Postgres that answered cannot be used and will not be retried on a timer, in words."""
    if isinstance(exc, ValueError):
        return INVALID_URL
    return "Cairn could not set up its tables on the server"


def sync_merge(a: Conversation, b: Conversation) -> Conversation:
    from storage.backends import merge_conversations

    return merge_conversations(a, b)


async def _update_local(backend: Backend, thread_id: str, changes: dict[str, Any]) -> Conversation:
    assert isinstance(backend, LocalBackend)
    return await backend.update_conversation(thread_id, **changes)
