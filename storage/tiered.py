"""``TieredSaver``: the one checkpointer the graph sees, routing every call through the storage manager.

Writes go to the current tier (local first) and move down a tier on an environment error; reads come from the tier
that holds the thread. The manager's background tasks carry what was written locally to Postgres.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

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

from storage.backends import Backend, MemoryBackend
from storage.manager import StorageManager


def check_thread_id(thread_id: object) -> str:
    """Thread ids are keys in every tier: Postgres cannot store a NUL in text, so none may carry one."""
    if not isinstance(thread_id, str) or not thread_id:
        raise ValueError(f"thread_id must be a non-empty string, got {thread_id!r}")
    if "\x00" in thread_id:
        raise ValueError("thread_id must not contain NUL characters")
    return thread_id


def _thread_of(config: RunnableConfig) -> str:
    return check_thread_id(config["configurable"].get("thread_id"))


class TieredSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer over Postgres, SQLite and memory, local-first."""

    def __init__(self, manager: StorageManager, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.manager = manager
        self.loop = asyncio.get_running_loop()

    # --- writes ---------------------------------------------------------------------------------------------
    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        thread_id = _thread_of(config)

        async def put(backend: Backend) -> RunnableConfig:
            result = await backend.saver.aput(config, checkpoint, metadata, new_versions)
            if isinstance(backend, MemoryBackend):
                backend.record_put((thread_id, config["configurable"].get("checkpoint_ns", ""), checkpoint["id"]))
            return result

        return await self.manager.write(thread_id, put)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        thread_id = _thread_of(config)

        async def put_writes(backend: Backend) -> None:
            await backend.saver.aput_writes(config, writes, task_id, task_path)
            if isinstance(backend, MemoryBackend):
                c = config["configurable"]
                backend.record_put((thread_id, c.get("checkpoint_ns", ""), c["checkpoint_id"]))

        await self.manager.write(thread_id, put_writes)

    async def adelete_thread(self, thread_id: str) -> None:
        await self.manager.delete_thread(check_thread_id(thread_id))

    # --- reads ----------------------------------------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id = _thread_of(config)
        wanted = get_checkpoint_id(config)
        best: CheckpointTuple | None = None
        for backend in self.manager.read_targets(thread_id):
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
        targets = self.manager.read_targets(thread_id)
        if len(targets) == 1:
            # Materialised first: the SQLite saver holds its lock while it iterates.
            items = await self.manager.read(targets[0], lambda b: _collect(b, config, filter, before, limit))
            for item in items or []:
                yield item
            return
        merged: dict[tuple[str, str, str], CheckpointTuple] = {}
        for backend in targets:
            for item in await self.manager.read(backend, lambda b: _collect(b, config, filter, before, limit)) or []:
                c = item.config["configurable"]
                merged.setdefault((c["thread_id"], c.get("checkpoint_ns", ""), c["checkpoint_id"]), item)
        ordered = sorted(merged.values(), key=lambda t: t.checkpoint["id"], reverse=True)
        for item in ordered[:limit] if limit is not None else ordered:
            yield item

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
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
