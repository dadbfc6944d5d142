"""``TieredSaver``: the one checkpointer the graph sees, routing every call through the storage manager.

Writes go to the current tier (local first) and move down a tier on an environment error; reads come from the tier
that holds the thread, or from the manager's ``CheckpointCache`` (``storage/cache.py``) when the thread lives in
SQLite and the cache knows the answer: a chat turn then reads nothing back that it wrote. The manager's background
tasks carry what was written locally to Postgres.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from storage import changes, clock
from storage.backends import Backend, MemoryBackend, SqliteBackend
from storage.cache import MISS, CheckpointCache, as_stored, stored_checkpoint
from storage.manager import StorageManager

T = TypeVar("T")


def check_thread_id(thread_id: object) -> str:
    """Thread ids are keys in every tier: Postgres cannot store a NUL in text, so none may carry one."""
    if not isinstance(thread_id, str) or not thread_id:
        raise ValueError(f"thread_id must be a non-empty string, got {thread_id!r}")
    if "\x00" in thread_id:
        raise ValueError("thread_id must not contain NUL characters")
    return thread_id


def _thread_of(config: RunnableConfig) -> str:
    return check_thread_id(config["configurable"].get("thread_id"))


@dataclass(eq=False)
class _Record:
    """One write call of the graph: ``aput`` (put=True) or ``aput_writes``, and the tiers that hold it."""

    key: tuple[str, str, str]
    args: tuple[Any, ...]
    put: bool
    tiers: set[str] = field(default_factory=set)


def _all_versions(backend: Backend, key: tuple[str, str, str], checkpoint: Checkpoint) -> ChannelVersions:
    """Every channel's version, so the tier stores every blob of the checkpoint (as sync's copies do).

    The in-memory saver overwrites a blob it already has, and writes an empty one for a channel the checkpoint
    holds no value of: keep the blobs it has rather than blank them."""
    versions = dict(checkpoint["channel_versions"])
    if isinstance(backend, MemoryBackend):
        blobs = backend.saver.blobs
        versions = {k: v for k, v in versions.items() if (key[0], key[1], k, v) not in blobs}
    return versions


class TieredSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer over Postgres, SQLite and memory, local-first."""

    def __init__(self, manager: StorageManager, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.manager = manager
        self.loop = asyncio.get_running_loop()
        # thread -> its recent write calls, oldest first (see _catch_up). Mutated in place, never replaced:
        # compile() may hand the graph a shallow copy of this saver, and both must share it.
        self._journal: OrderedDict[str, list[_Record]] = OrderedDict()

    # --- writes ---------------------------------------------------------------------------------------------
    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        thread_id = _thread_of(config)
        # Taken now: LangGraph goes on with the next step meanwhile, and may append to a list this checkpoint
        # holds (a Topic channel) before a later tier, the journal's replay or the cache looks at it.
        checkpoint, metadata = stored_checkpoint(checkpoint, self.serde), CheckpointMetadata(**metadata)
        c = config["configurable"]
        key = (thread_id, c.get("checkpoint_ns", ""), checkpoint["id"])
        parent = (thread_id, c.get("checkpoint_ns", ""), c.get("checkpoint_id"))

        async def put(backend: Backend) -> RunnableConfig:
            await self._catch_up(backend, thread_id)
            # Only the channels that changed carry blobs; the others were stored with an earlier checkpoint. If that
            # one is not in this tier for sure (first write of the thread this session, a fork, a tier change),
            # store every channel, or the tier would hold a checkpoint whose unchanged channels read as empty.
            here = any(r.put and r.key == parent and backend.tier in r.tiers for r in self._journal.get(thread_id, ()))
            versions = new_versions if here else _all_versions(backend, key, checkpoint)
            result = await backend.saver.aput(config, checkpoint, metadata, versions)
            if isinstance(backend, MemoryBackend):
                backend.record_put(key)
            self._remember(thread_id, _Record(key, (config, checkpoint, metadata), put=True), backend)
            await self._catch_up(backend, thread_id)
            self._cache_put(backend, thread_id, lambda cache: cache.put(config, checkpoint, metadata))
            return result

        result = await self._write(thread_id, put)
        if not key[1]:
            self.manager.emit(changes.of(turns=[thread_id]))
        return result

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        thread_id = _thread_of(config)
        writes = [(channel, as_stored(value, self.serde)) for channel, value in writes]  # as for aput's checkpoint
        c = config["configurable"]
        key = (thread_id, c.get("checkpoint_ns", ""), c["checkpoint_id"])

        async def put_writes(backend: Backend) -> None:
            await self._catch_up(backend, thread_id)
            await backend.saver.aput_writes(config, writes, task_id, task_path)
            if isinstance(backend, MemoryBackend):
                backend.record_put(key)
            self._remember(thread_id, _Record(key, (config, writes, task_id, task_path), put=False), backend)
            await self._catch_up(backend, thread_id)
            self._cache_put(backend, thread_id, lambda cache: cache.put_writes(config, writes, task_id, task_path))

        await self._write(thread_id, put_writes)

    async def _write(self, thread_id: str, op: Callable[[Backend], Awaitable[T]]) -> T:
        try:
            return await self.manager.write(thread_id, op)
        except BaseException:
            # Cancelled (Stop) or failed on the way: the tier may have stored the write all the same (aiosqlite
            # finishes a statement it has started), so what the cache knows of the thread may be short of it.
            self.manager.cache.forget(thread_id)
            raise

    def _cache_put(self, backend: Backend, thread_id: str, put: Callable[[CheckpointCache], None]) -> None:
        """Tell the cache what SQLite took. A thread written to another tier is read from the tiers from now on
        (``StorageManager.cached``)."""
        if isinstance(backend, SqliteBackend):
            put(self.manager.cache)
        else:
            self.manager.cache.forget(thread_id)

    # A checkpoint and the writes made on it must live in one tier: each tier's saver reads a checkpoint's pending
    # writes only from its own tables. When the tier changes in the middle of a run (SQLite fills up between a
    # checkpoint and the writes of its tasks, and LangGraph issues both concurrently), the calls of the thread's
    # recent checkpoints are replayed into the tier that takes the writes now, so the new tier alone holds the run
    # so far. Replays are idempotent in every saver. Only recent checkpoints are kept: writes go to the newest.
    JOURNAL_CHECKPOINTS = 8
    JOURNAL_RECORDS = 256
    JOURNAL_THREADS = 64

    def _remember(self, thread_id: str, record: _Record, backend: Backend) -> None:
        journal = self._journal.setdefault(thread_id, [])
        self._journal.move_to_end(thread_id)
        record.tiers.add(backend.tier)
        journal.append(record)
        keys: list[tuple[str, str, str]] = []
        for r in reversed(journal):
            if r.key not in keys:
                keys.append(r.key)
        if len(keys) > self.JOURNAL_CHECKPOINTS:
            keep = set(keys[: self.JOURNAL_CHECKPOINTS])
            journal[:] = [r for r in journal if r.key in keep]
        del journal[: -self.JOURNAL_RECORDS]
        while len(self._journal) > self.JOURNAL_THREADS:
            self._journal.popitem(last=False)

    async def _catch_up(self, backend: Backend, thread_id: str) -> None:
        """Replay into ``backend`` the thread's recent calls that went to another tier."""
        for record in list(self._journal.get(thread_id, ())):
            if backend.tier in record.tiers:
                continue
            if record.put:
                config, checkpoint, metadata = record.args
                versions = _all_versions(backend, record.key, checkpoint)
                await backend.saver.aput(config, checkpoint, metadata, versions)
            else:
                config, writes, task_id, task_path = record.args
                await backend.saver.aput_writes(config, writes, task_id, task_path)
            if isinstance(backend, MemoryBackend):
                backend.record_put(record.key)
            record.tiers.add(backend.tier)

    async def adelete_thread(self, thread_id: str) -> None:
        self._journal.pop(check_thread_id(thread_id), None)  # nothing deleted may be replayed anywhere
        await self.manager.delete_thread(thread_id)

    # --- reads ----------------------------------------------------------------------------------------------
    def _targets(self, thread_id: str | None) -> Iterator[Backend]:
        """The tiers to read a thread from, each once. Asked again after every read: a read that fails moves the
        tier (SQLite lost mid-session), and the tier that takes over must be read too, or the thread would look
        empty and the next turn would start it afresh."""
        tried: list[Backend] = []
        while True:
            backend = next((b for b in self.manager.read_targets(thread_id) if all(b is not t for t in tried)), None)
            if backend is None:
                return
            tried.append(backend)
            yield backend

    async def _cached_read(
        self,
        config: RunnableConfig,
        ask: Callable[[CheckpointCache], Any],
        read: Callable[[], Awaitable[T]],
        remember: Callable[[CheckpointCache, int, T], None],
    ) -> T:
        """``read`` from the tiers, unless the cache can answer (``ask``); what was read is ``remember``ed."""
        await self.manager.settled(_thread_of(config))
        cache = await self.manager.cached(_thread_of(config), latest=get_checkpoint_id(config) is None)
        if cache is None:
            return await read()
        hit = ask(cache)
        if hit is not MISS:
            return hit
        token = cache.token()
        found = await read()
        remember(cache, token, found)
        return found

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found = await self._cached_read(
            config,
            lambda cache: cache.get_tuple(config),
            lambda: self._read_tuple(config),
            lambda cache, token, found: cache.remember_tuple(token, config, found),
        )
        if found is not None:
            # A run continues from what it read: its checkpoints must sort after this one, whatever the clocks say.
            clock.observe(found.checkpoint["id"])
        return found

    async def _read_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        wanted = get_checkpoint_id(config)
        best: CheckpointTuple | None = None
        for backend in self._targets(_thread_of(config)):
            found = await self.manager.read(backend, lambda b: b.saver.aget_tuple(config))
            if found is None:
                continue
            if wanted is not None:
                return found
            if best is None or found.checkpoint["id"] > best.checkpoint["id"]:
                best = found
        return best

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        thread_id = _thread_of(config) if config and config["configurable"].get("thread_id") is not None else None
        if thread_id is not None:
            await self.manager.settled(thread_id)
        # Materialised first: the SQLite saver holds its lock while it iterates.
        results = [
            await self.manager.read(backend, lambda b: _collect(b, config, filter, before, limit))
            for backend in self._targets(thread_id)
        ]
        clock.observe_all(item.checkpoint["id"] for items in results for item in items or [])
        if len(results) == 1:
            for item in results[0] or []:
                yield item
            return
        merged: dict[tuple[str, str, str], CheckpointTuple] = {}
        for items in results:
            for item in items or []:
                c = item.config["configurable"]
                merged.setdefault((c["thread_id"], c.get("checkpoint_ns", ""), c["checkpoint_id"]), item)
        ordered = sorted(merged.values(), key=lambda t: t.checkpoint["id"], reverse=True)
        for item in ordered[:limit] if limit is not None else ordered:
            yield item

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._cached_read(
            config,
            lambda cache: cache.delta_history(config, channels),
            lambda: self._read_delta_history(config, channels),
            lambda cache, token, found: cache.remember_history(token, config, found),
        )

    async def _read_delta_history(
        self, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        targets = self.manager.read_targets(_thread_of(config))
        if len(targets) == 1:
            result = await self.manager.read(
                targets[0], lambda b: b.saver.aget_delta_channel_history(config=config, channels=channels)
            )
            if result is not None:
                return result
        # The thread's history spans tiers (it moved tier this session): walk the parents through our own reads.
        return await super().aget_delta_channel_history(config=config, channels=channels)

    def get_next_version(self, current: str | None, channel: None) -> str:
        # Identical to the built-in savers', so threads written by any of them resume here and back.
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # --- the sync API, for callers outside the loop's thread ------------------------------------------------
    def _bridge(self, coro: Any) -> Any:
        try:
            if asyncio.get_running_loop() is self.loop:
                coro.close()
                raise asyncio.InvalidStateError(
                    "Synchronous calls to TieredSaver are only allowed from a different thread; "
                    "from the main thread use the async methods (ainvoke, aget_state, ...)."
                )
        except RuntimeError:
            pass
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._bridge(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        yield from self._bridge(collect())

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._bridge(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._bridge(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._bridge(self.adelete_thread(thread_id))

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self._bridge(self.aget_delta_channel_history(config=config, channels=channels))


async def _collect(
    backend: Backend,
    config: RunnableConfig | None,
    filter: dict[str, Any] | None,
    before: RunnableConfig | None,
    limit: int | None,
) -> list[CheckpointTuple]:
    return [t async for t in backend.saver.alist(config, filter=filter, before=before, limit=limit)]
