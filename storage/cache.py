"""Checkpoints this process wrote or read, kept decoded, so a chat turn does not read back what it just wrote.

A turn reads its conversation twice: LangGraph loads the thread before the run, and the app reads the state after
it. With the messages in a ``DeltaChannel`` each read finds the last snapshot among the ancestors and decodes it
and every message written since: about 12 ms at 1,000 turns, whatever the saver. Checkpoints are immutable, and the
local tiers are written by this process only, so what it wrote and what it read can be answered from memory, the
way the local tier itself would answer.

For the checkpoints it knows, the cache mirrors the local tier:

- an entry per checkpoint (checkpoint, metadata as the SQLite saver stores it, parent, and every pending write with
  its task path), made by ``put`` or remembered from a read. A read's pending writes come without their task
  paths, so an entry read with pending writes answers ``get_tuple`` but not a history walk through it;
- the newest checkpoint of each (thread, namespace), once a read has told it (or that there is none) and every
  ``put`` since has moved it;
- delta-channel histories at checkpoints ("anchors"), read from the tier or worked out here, so a walk stops at the
  nearest one instead of going back to the snapshot.

Whatever else writes a thread (the sync bringing a conversation down, a deletion, another process on the same
file) makes the owner call ``forget`` or ``clear``; a read that raced with any change is not remembered (``token``).
Values are shared with the graph, not deep-copied: like LangGraph's own background checkpointing, this relies on a
written value not being mutated in place afterwards. Mutable containers are copied one level on the way in and
out, so a channel that appends to its list (``Topic``) or a caller editing a returned list cannot change what is
stored.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot


class _Miss:
    def __repr__(self) -> str:
        return "MISS"


MISS: Final = _Miss()
"""The cache cannot answer: ask the tier."""

Slot = tuple[str, str]
"""(checkpoint_ns, checkpoint_id) within a thread."""


def own(value: Any) -> Any:
    """``value`` with its mutable container copied one level (and a snapshot's value), so that neither the graph
    nor a caller can change what the cache holds by appending to a list it was given."""
    if isinstance(value, list | dict | set):
        return value.copy()
    if isinstance(value, _DeltaSnapshot):
        return _DeltaSnapshot(own(value.value))
    return value


def own_checkpoint(checkpoint: Checkpoint, value: Callable[[Any], Any] = own) -> Checkpoint:
    copied = dict(checkpoint)
    copied["channel_values"] = {k: value(v) for k, v in checkpoint["channel_values"].items()}
    copied["channel_versions"] = dict(checkpoint["channel_versions"])
    copied["versions_seen"] = {k: dict(v) for k, v in checkpoint["versions_seen"].items()}
    return copied  # type: ignore[return-value]


def as_stored(value: Any, serde: SerializerProtocol) -> Any:
    """``value`` as a tier gives it back: encoded and decoded, as of now (the graph may change its own copy
    later). A snapshot's messages are kept as they are, in a list of their own: they are the whole conversation,
    and decoding them again would cost what the cache saves; a message's round trip gives an equal message."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, _DeltaSnapshot) and isinstance(value.value, list):
        return _DeltaSnapshot(list(value.value))
    return serde.loads_typed(serde.dumps_typed(value))


def stored_checkpoint(checkpoint: Checkpoint, serde: SerializerProtocol) -> Checkpoint:
    return own_checkpoint(checkpoint, lambda value: as_stored(value, serde))


@dataclass(frozen=True)
class _Write:
    task_id: str
    channel: str
    value: Any
    task_path: str
    idx: int


@dataclass(eq=False)
class _Entry:
    checkpoint: Checkpoint
    metadata: str
    """JSON, as the SQLite saver stores it: each answer decodes a fresh dict, equal to what the tier returns."""
    parent_id: str | None
    writes: dict[tuple[str, int], _Write] | None
    """Every pending write by (task_id, idx); None when it has writes read without their task paths."""
    read_writes: list[PendingWrite] = field(default_factory=list)
    """The pending writes as read, when ``writes`` is None."""

    def _ordered(self) -> list[_Write]:
        """In the order the tiers give them (and live execution applied them)."""
        assert self.writes is not None
        return sorted(self.writes.values(), key=lambda w: writes_sort_key(w.task_path, w.task_id, w.idx))

    def pending_writes(self) -> list[PendingWrite]:
        if self.writes is None:
            return [(task_id, channel, own(value)) for task_id, channel, value in self.read_writes]
        return [(w.task_id, w.channel, own(w.value)) for w in self._ordered()]

    def channel_writes(self, channel: str) -> list[PendingWrite]:
        return [(w.task_id, channel, w.value) for w in self._ordered() if w.channel == channel]


@dataclass(eq=False)
class _Thread:
    entries: OrderedDict[Slot, _Entry] = field(default_factory=OrderedDict)
    latest: dict[str, str | None] = field(default_factory=dict)
    """namespace -> newest checkpoint id, None when it has none; a namespace not here is unknown."""
    anchors: OrderedDict[Slot, dict[str, DeltaChannelHistory]] = field(default_factory=OrderedDict)
    orphans: OrderedDict[Slot, dict[tuple[str, int], _Write] | None] = field(default_factory=OrderedDict)
    """Writes stored before their checkpoint was seen here: all of them, or None when others may be stored too."""


def _slot(config: RunnableConfig) -> tuple[str, str, str | None]:
    c = config["configurable"]
    return c["thread_id"], c.get("checkpoint_ns", ""), get_checkpoint_id(config)


def _merged(
    writes: dict[tuple[str, int], _Write] | None, added: dict[tuple[str, int], _Write], replace: bool
) -> dict[tuple[str, int], _Write] | None:
    """The writes of a checkpoint after the tier stored ``added``; None when which one the tier kept is not known
    here (an ordinary write stored again: the tiers keep the first, in their own way)."""
    if writes is None or (added.keys() & writes.keys() and not replace):
        return None
    writes.update(added)
    return writes


def _fresh_history(history: DeltaChannelHistory) -> DeltaChannelHistory:
    fresh: DeltaChannelHistory = {"writes": [(t, c, own(v)) for t, c, v in history["writes"]]}
    if "seed" in history:
        fresh["seed"] = own(history["seed"])
    return fresh


class CheckpointCache:
    """Decoded checkpoints and delta histories of the most recently used threads (see the module's docstring)."""

    MAX_THREADS = 4
    """A long conversation's decoded messages are a few MB: keep the ones the user is at."""
    MAX_ENTRIES = 64
    """Checkpoints kept per thread: about 20 turns of a chat (3 checkpoints a turn)."""
    MAX_ANCHORS = 16
    MAX_ORPHANS = 256

    def __init__(self) -> None:
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self._stamp = 0
        self.hits = 0
        self.misses = 0

    # --- bookkeeping ------------------------------------------------------------------------------------------
    def token(self) -> int:
        """Take before a read of the tier; ``remember_*`` ignores the read if anything changed meanwhile."""
        return self._stamp

    def bump(self) -> None:
        """Something changed that a read in flight may not have seen (a write, a failed tier)."""
        self._stamp += 1

    def forget(self, thread_id: str) -> None:
        """The thread was written by someone else (the sync, a deletion): nothing known of it holds."""
        self._threads.pop(thread_id, None)
        self.bump()

    def clear(self) -> None:
        self._threads.clear()
        self.bump()

    def _thread(self, thread_id: str, *, create: bool) -> _Thread | None:
        thread = self._threads.get(thread_id)
        if thread is None and create:
            thread = self._threads[thread_id] = _Thread()
            while len(self._threads) > self.MAX_THREADS:
                self._threads.popitem(last=False)
        if thread is not None:
            self._threads.move_to_end(thread_id)
        return thread

    def _add(self, thread: _Thread, slot: Slot, entry: _Entry) -> None:
        thread.entries[slot] = entry
        thread.entries.move_to_end(slot)
        while len(thread.entries) > self.MAX_ENTRIES:
            thread.entries.popitem(last=False)

    def _anchor(self, thread: _Thread, slot: Slot, histories: Mapping[str, DeltaChannelHistory]) -> None:
        anchor = thread.anchors.setdefault(slot, {})
        anchor.update(histories)
        thread.anchors.move_to_end(slot)
        while len(thread.anchors) > self.MAX_ANCHORS:
            thread.anchors.popitem(last=False)

    # --- writes, after the tier took them ---------------------------------------------------------------------
    # The caller passes the values as stored (``stored_checkpoint``, ``as_stored``), taken when the graph made the
    # call: the tier stores them as they were then, and LangGraph may append to a list of them before it is done.
    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata) -> None:
        thread_id, ns, parent_id = _slot(config)
        cid = checkpoint["id"]
        slot = (ns, cid)
        thread = self._thread(thread_id, create=True)
        assert thread is not None
        self.bump()
        if ns in thread.latest:
            newest = thread.latest[ns]
            thread.latest[ns] = cid if newest is None or cid > newest else newest
        # As the SQLite saver stores it (which has just done the same without an error).
        stored_metadata = json.dumps(get_checkpoint_metadata(config, metadata), ensure_ascii=False)
        old = thread.entries.get(slot)
        if old is not None:
            thread.anchors.clear()  # put again, with another parent or other values: no history through it holds
            writes, read_writes = old.writes, old.read_writes
        else:
            writes, read_writes = thread.orphans.pop(slot, {}), []
            if writes is None:
                return  # it has writes this cache does not know
        self._add(thread, slot, _Entry(checkpoint, stored_metadata, parent_id, writes, read_writes))

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str
    ) -> None:
        thread_id, ns, cid = _slot(config)
        assert cid is not None
        slot = (ns, cid)
        thread = self._thread(thread_id, create=True)
        assert thread is not None
        self.bump()
        newest = thread.latest.get(ns, MISS)
        # A checkpoint newer than every stored one is being made now (LangGraph stores a step's writes before the
        # checkpoint they belong to): nothing else is stored at it, and it has no descendants.
        new_checkpoint = newest is None or (isinstance(newest, str) and cid > newest)
        if not new_checkpoint and newest != cid:
            # Writes on a checkpoint that may have descendants change every history through it. LangGraph does not
            # do this (it forks instead), but a caller of the saver may.
            thread.anchors.clear()
        added = {
            (task_id, WRITES_IDX_MAP.get(channel, idx)): _Write(
                task_id, channel, value, task_path, WRITES_IDX_MAP.get(channel, idx)
            )
            for idx, (channel, value) in enumerate(writes)
        }
        replace = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        entry = thread.entries.get(slot)
        if entry is not None:
            entry.writes = _merged(entry.writes, added, replace)
            if entry.writes is None:
                del thread.entries[slot]
        elif slot in thread.orphans:
            thread.orphans[slot] = _merged(thread.orphans[slot], added, replace)
        else:
            thread.orphans[slot] = added if new_checkpoint else None
            while len(thread.orphans) > self.MAX_ORPHANS:
                thread.orphans.popitem(last=False)

    # --- reads --------------------------------------------------------------------------------------------------
    def _target(self, thread: _Thread, ns: str, cid: str | None) -> str | _Miss | None:
        if cid is not None:
            return cid
        return thread.latest.get(ns, MISS)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | _Miss | None:
        thread_id, ns, wanted = _slot(config)
        thread = self._thread(thread_id, create=False)
        cid = self._target(thread, ns, wanted) if thread is not None else MISS
        if cid is None:
            self.hits += 1
            return None  # known: the thread has no checkpoint here
        entry = thread.entries.get((ns, cid)) if isinstance(cid, str) and thread is not None else None
        if entry is None:
            self.misses += 1
            return MISS
        self.hits += 1
        checkpoint_config: RunnableConfig = (
            config
            if wanted is not None
            else {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}
        )
        parent_config: RunnableConfig | None = (
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": entry.parent_id}}
            if entry.parent_id
            else None
        )
        return CheckpointTuple(
            checkpoint_config,
            own_checkpoint(entry.checkpoint),
            json.loads(entry.metadata),
            parent_config,
            entry.pending_writes(),
        )

    def remember_tuple(self, token: int, config: RunnableConfig, found: CheckpointTuple | None) -> None:
        """What the tier answered to ``get_tuple(config)``, read since ``token``."""
        if token != self._stamp:
            return
        thread_id, ns, wanted = _slot(config)
        thread = self._thread(thread_id, create=True)
        assert thread is not None
        if found is None:
            if wanted is None:
                thread.latest[ns] = None
            return
        cid = found.checkpoint["id"]
        if wanted is None:
            thread.latest[ns] = cid
        if (ns, cid) in thread.entries:
            return
        metadata = json.dumps(found.metadata, ensure_ascii=False)  # the SQLite saver's own json.loads of it
        parent_id = found.parent_config["configurable"].get("checkpoint_id") if found.parent_config else None
        pending = [(task_id, channel, own(value)) for task_id, channel, value in found.pending_writes or ()]
        entry = _Entry(own_checkpoint(found.checkpoint), metadata, parent_id, None if pending else {}, pending)
        self._add(thread, (ns, cid), entry)

    def delta_history(
        self, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory] | _Miss:
        thread_id, ns, wanted = _slot(config)
        thread = self._thread(thread_id, create=False)
        if thread is None:
            self.misses += 1
            return MISS
        cid = self._target(thread, ns, wanted)
        if cid is None:
            self.hits += 1
            return {ch: {"writes": []} for ch in channels}
        if isinstance(cid, _Miss):
            self.misses += 1
            return MISS
        found: dict[str, DeltaChannelHistory] = {}
        for channel in channels:
            history = self._history(thread, ns, cid, channel)
            if history is None:
                self.misses += 1
                return MISS
            found[channel] = history
        self._anchor(thread, (ns, cid), found)
        self.hits += 1
        return {channel: _fresh_history(history) for channel, history in found.items()}

    def _history(self, thread: _Thread, ns: str, cid: str, channel: str) -> DeltaChannelHistory | None:
        """What the saver's ``get_delta_channel_history`` gives for one channel at checkpoint ``cid``: the
        channel's stored value at the nearest ancestor that holds one (the seed), and the channel's writes at every
        ancestor up to and including that one, oldest first. None when a checkpoint on the way is not known."""
        path: list[_Entry] = []
        walked = {cid}
        slot = (ns, cid)
        base: DeltaChannelHistory
        while True:
            anchor = thread.anchors.get(slot)
            if anchor is not None and channel in anchor:
                base = anchor[channel]
                break
            entry = thread.entries.get(slot)
            if entry is None:
                return None
            parent_id = entry.parent_id
            if parent_id is None or parent_id in walked:
                base = {"writes": []}  # the root (or a loop, where the saver's walk stops too): no seed
                break
            walked.add(parent_id)
            parent = thread.entries.get((ns, parent_id))
            if parent is None or parent.writes is None:
                return None
            path.append(parent)
            values = parent.checkpoint["channel_values"]
            if channel in values:
                base = {"writes": [], "seed": values[channel]}
                break
            slot = (ns, parent_id)
        writes = list(base["writes"])
        for entry in reversed(path):
            writes.extend(entry.channel_writes(channel))
        history: DeltaChannelHistory = {"writes": writes}
        if "seed" in base:
            history["seed"] = base["seed"]
        return history

    def remember_history(
        self, token: int, config: RunnableConfig, histories: Mapping[str, DeltaChannelHistory]
    ) -> None:
        """What the tier answered to ``delta_history(config, ...)``, read since ``token``."""
        if token != self._stamp:
            return
        thread_id, ns, wanted = _slot(config)
        thread = self._thread(thread_id, create=True)
        assert thread is not None
        cid = self._target(thread, ns, wanted)
        if isinstance(cid, str):
            self._anchor(thread, (ns, cid), {ch: _fresh_history(h) for ch, h in histories.items()})
