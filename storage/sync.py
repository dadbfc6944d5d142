"""Copying checkpoints between backends, in order and idempotently.

Checkpoints are immutable and keyed by (thread, namespace, id), so a copy is a union: copying again changes nothing,
and two machines that continued one conversation apart leave two branches. A copy stores what ``aput`` of each
checkpoint under its *parent's* config with all its channel versions stores, then its writes once per task, in the
order live execution wrote them: downloads call the savers so, one checkpoint at a time (``copy_checkpoint``);
uploads build the same rows for a batch at a time (storage/upload.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from langchain_core.runnables import RunnableConfig

from storage import changes, clock
from storage.backends import Backend, Conversation, Key, LocalBackend, PostgresBackend, WriteKey
from storage.changes import Changes

log = logging.getLogger("cairn.sync")

PUSH_BATCH = 256


def checkpoint_config(key: Key) -> RunnableConfig:
    thread_id, checkpoint_ns, checkpoint_id = key
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint_id}}


async def copy_checkpoint(source: Backend, target: Backend, key: Key) -> bool:
    """Copy one checkpoint and its pending writes; False when the source no longer has it (deleted since)."""
    config = checkpoint_config(key)
    found = await source.saver.aget_tuple(config)
    if found is None:
        return False
    thread_id, checkpoint_ns, _ = key
    parent: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns}}
    if found.parent_config is not None:
        parent["configurable"]["checkpoint_id"] = found.parent_config["configurable"]["checkpoint_id"]
    checkpoint = found.checkpoint
    await target.saver.aput(parent, checkpoint, found.metadata, checkpoint["channel_versions"])
    if found.pending_writes:
        paths = await source.task_paths(key)
        by_task: dict[str, list[tuple[str, object]]] = {}
        for task_id, channel, value in found.pending_writes:
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            await target.saver.aput_writes(config, writes, task_id, paths.get(task_id, ""))
    return True


@dataclass
class SyncReport:
    uploaded: int = 0
    downloaded: int = 0
    deleted_threads: int = 0
    index_rows: int = 0

    def __bool__(self) -> bool:
        return bool(self.uploaded or self.downloaded or self.deleted_threads or self.index_rows)


async def push(local: LocalBackend, remote: PostgresBackend) -> SyncReport:
    """Upload the index rows changed locally (deletions first), then what the outbox lists, a batch at a time.

    Each batch is stored in one transaction (storage/upload.py), and acknowledged once Postgres has committed it:
    an upload cut short leaves whole batches behind it and starts again at the first one not acknowledged. The
    outbox lists keys oldest first per thread, so a checkpoint never arrives before its parent.
    """
    report = SyncReport()
    await push_index(local, remote, report)
    async with remote.uploader() as put:
        while True:
            keys, mark = await local.pending(PUSH_BATCH)
            if not keys:
                break
            batch = await local.stored(keys)  # a key no longer there belongs to a thread deleted since: skipped
            if batch:
                await put(batch)
            report.uploaded += len(batch)
            await local.acknowledge(keys, mark)
    return report


async def push_index(local: LocalBackend, remote: PostgresBackend, report: SyncReport) -> None:
    dirty = await local.dirty_conversations()
    if not dirty:
        return
    for row in dirty:
        if row.deleted:
            await remote.delete_thread(row.thread_id)
            report.deleted_threads += 1
    await remote.merge_conversations(dirty)
    for row in dirty:
        await local.mark_clean(row)
    report.index_rows += len(dirty)


Report = Callable[[Changes], None]
Hold = Callable[[set[str]], AbstractAsyncContextManager[None]]
"""Marks threads as being brought down: reads of them wait until it is done (see StorageManager.holding)."""


@contextlib.asynccontextmanager
async def _no_hold(threads: set[str]) -> AsyncIterator[None]:
    yield


def _ignore(changes: Changes) -> None:
    return None


async def reconcile(
    local: LocalBackend, remote: PostgresBackend, report_change: Report = _ignore, hold: Hold = _no_hold
) -> SyncReport:
    """Compare both sides key by key: queue what Postgres lacks, bring down what only Postgres has, and heal the
    index rows Postgres lacks or holds older (titles, pins, tombstones: an empty or restored server converges).

    Run when Postgres (re)appears and when asked; the live feed and the incremental poll do the rest.
    ``report_change`` hears of each change made locally here (threads brought down, index rows merged, threads
    deleted), as soon as it is made.
    """
    report = SyncReport()
    remote_rows = {c.thread_id: c for c in await remote.conversations()}
    local_rows = {c.thread_id: c for c in await local.conversations()}
    deleted = {t for t, c in remote_rows.items() if c.deleted} | {t for t, c in local_rows.items() if c.deleted}

    # Tombstones first, so nothing deleted on one side is copied back from the other.
    for thread_id in sorted(deleted):
        if thread_id in local_rows and not local_rows[thread_id].deleted:
            await local.merge_conversations([remote_rows[thread_id]])
            report_change(changes.of(removed=[thread_id], source="sync"))
        if await local.checkpoint_keys(thread_id):
            await local.delete_thread(thread_id)
            report_change(changes.of(removed=[thread_id], source="sync"))
            report.deleted_threads += 1
    # Index rows Postgres lacks or holds older than here: marked for upload (and counted as pending) like a rename.
    heal = [row for thread_id, row in local_rows.items() if _needs_upload(row, remote_rows.get(thread_id))]
    if heal:
        log.info("reconcile: %d conversation index rows to upload", len(heal))
        await local.merge_conversations(heal, dirty=True)
    await push_index(local, remote, report)

    local_keys = await local.checkpoint_keys()
    remote_keys = await remote.checkpoint_keys()
    local_writes = await local.write_keys()
    remote_writes = await remote.write_keys()

    # A deleted thread keeps nothing in Postgres either: a machine that had not heard of the deletion yet may have
    # uploaded a turn of it since (its own next comparison then drops its copy, above).
    for thread_id in sorted(({k[0] for k in remote_keys} | {w[0] for w in remote_writes}) & deleted):
        await remote.delete_thread(thread_id)
        report.deleted_threads += 1
    remote_keys = {k for k in remote_keys if k[0] not in deleted}
    remote_writes = {w for w in remote_writes if w[0] not in deleted}

    upload = _keys_for(local_keys - remote_keys, local_writes - remote_writes, deleted)
    if upload:
        log.info("reconcile: %d checkpoints to upload", len(upload))
        await local.enqueue(sorted(upload))
    download = _keys_for(remote_keys - local_keys, remote_writes - local_writes, deleted) & remote_keys
    if download:
        log.info("reconcile: %d checkpoints to download", len(download))
        report.downloaded += await _download(local, remote, download, report_change, hold)

    newer = [
        row
        for thread_id, row in remote_rows.items()
        if thread_id not in deleted and _is_newer(row, local_rows.get(thread_id))
    ]
    if newer:
        await local.merge_conversations(newer)
        report.index_rows += len(newer)
        report_change(changes.of(index=[r.thread_id for r in newer], source="sync"))
    pushed = await push(local, remote)
    report.uploaded += pushed.uploaded
    report.index_rows += pushed.index_rows
    return report


async def pull_thread(
    local: LocalBackend,
    remote: PostgresBackend,
    thread_id: str,
    report_change: Report = _ignore,
    hold: Hold = _no_hold,
) -> SyncReport:
    """Bring down what Postgres has of one thread and this side lacks: its checkpoints and writes, a newer index
    row, or its deletion. What this side has and Postgres lacks is left to the upload (the outbox)."""
    report = SyncReport()
    theirs = await remote.conversation(thread_id)
    mine = await local.conversation(thread_id)
    if (theirs is not None and theirs.deleted) or (mine is not None and mine.deleted):
        if theirs is not None and theirs.deleted and (mine is None or not mine.deleted):
            await local.merge_conversations([theirs])
            report_change(changes.of(removed=[thread_id], source="sync"))
        if await local.checkpoint_keys(thread_id):
            await local.delete_thread(thread_id)
            report_change(changes.of(removed=[thread_id], source="sync"))
            report.deleted_threads += 1
        return report
    remote_keys = await remote.checkpoint_keys(thread_id)
    local_keys = await local.checkpoint_keys(thread_id)
    remote_writes = await remote.write_keys(thread_id)
    local_writes = await local.write_keys(thread_id)
    download = _keys_for(remote_keys - local_keys, remote_writes - local_writes, set()) & remote_keys
    if download:
        report.downloaded += await _download(local, remote, download, report_change, hold)
    if theirs is not None and _is_newer(theirs, mine):
        await local.merge_conversations([theirs])
        report.index_rows += 1
        report_change(changes.of(index=[thread_id], source="sync"))
    return report


async def _download(
    local: LocalBackend, remote: PostgresBackend, keys: set[Key], report_change: Report, hold: Hold
) -> int:
    """Copy ``keys`` from Postgres, parents first (ids order a thread's checkpoints: see storage/clock.py).

    The threads are held meanwhile: a turn that began on a half-copied thread would continue an older checkpoint
    and fork the conversation."""
    async with hold({k[0] for k in keys}):
        return await _copy_down(local, remote, keys, report_change)


async def _copy_down(local: LocalBackend, remote: PostgresBackend, keys: set[Key], report_change: Report) -> int:
    clock.observe_all(k[2] for k in keys)  # what this device writes next must sort after what it has now seen
    mark = await local.outbox_mark()
    copied = 0
    try:
        for key in sorted(keys):
            try:
                if await copy_checkpoint(remote, local, key):
                    copied += 1
            finally:
                # Also when the copy failed half-way: its checkpoint may be there without writes.
                report_change(changes.of(turns=[key[0]], source="sync"))
    finally:
        # They came from Postgres: no need to send them back.
        await local.forget_after(keys, mark)
    return copied


def _keys_for(checkpoints: Iterable[Key], writes: Iterable[WriteKey], deleted: set[str]) -> set[Key]:
    keys = set(checkpoints) | {(w[0], w[1], w[2]) for w in writes}
    return {k for k in keys if k[0] not in deleted}


def _needs_upload(mine: Conversation, theirs: Conversation | None) -> bool:
    """Whether Postgres lacks this side's index row, holds older metadata, or lacks its deletion."""
    if theirs is None:
        return True
    return mine.meta_changed > theirs.meta_changed or (mine.deleted and not theirs.deleted)


def _is_newer(theirs: Conversation, mine: Conversation | None) -> bool:
    """Whether a Postgres index row has something this side lacks: a thread it has no row for, or newer metadata.

    ``updated`` is left out on purpose: each database's trigger stamps it when a checkpoint arrives there, so
    Postgres's is the upload time of this side's own turns. Taking it would rewrite every uploaded row locally
    on the next comparison (a sync that never settles) and reorder the list by upload time. New activity from
    elsewhere arrives as checkpoints, whose download moves the local ``updated`` by the same trigger.
    """
    if mine is None:
        return True
    return theirs.meta_changed > mine.meta_changed
