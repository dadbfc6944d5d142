"""Moving what one local tier holds into another: memory drained into SQLite, a deleted file's content into a new one.

Local tiers hold the user's words first; some may exist nowhere else (no Postgres, or not yet uploaded). When the
local file comes back (space freed, folder writable again) what went to memory meanwhile is written into it; when the
file was deleted under the app (the open connection still reads the unlinked file) everything is copied into a new
one. Both are the sync's copy (``sync.copy_checkpoint``: parents first, idempotent), plus the index rows with their
upload flags, plus what was still waiting for Postgres, which stays waiting: nothing is lost, nothing is uploaded
twice for nothing.
"""

from __future__ import annotations

import logging

from storage.backends import LocalBackend
from storage.sync import copy_checkpoint

log = logging.getLogger("cairn.storage")

ALL = 2**62


async def copy_all(source: LocalBackend, target: LocalBackend) -> set[str]:
    """Copy every checkpoint, write and index row ``source`` holds that ``target`` lacks; returns the threads
    copied. Keys waiting for Postgres in ``source`` wait in ``target`` too; the others do not."""
    keys, _mark = await source.pending(ALL)
    pending = set(keys)
    have = await target.checkpoint_keys()
    have_writes = await target.write_keys()
    writes = {(w[0], w[1], w[2]) for w in await source.write_keys() if w not in have_writes}
    missing = sorted((await source.checkpoint_keys() - have) | writes)
    mark = await target.outbox_mark()
    copied = 0
    for key in missing:
        if await copy_checkpoint(source, target, key):
            copied += 1
    # The target's triggers queued every copied key for upload: keep only those the source still had to upload.
    await target.forget_after([k for k in missing if k not in pending], mark)
    dirty = {c.thread_id for c in await source.dirty_conversations()}
    rows = await source.conversations()
    await target.merge_conversations([r for r in rows if r.thread_id in dirty], dirty=True)
    await target.merge_conversations([r for r in rows if r.thread_id not in dirty])
    if missing or rows:
        log.info("copied %d checkpoints and %d conversation rows between local tiers", copied, len(rows))
    return {k[0] for k in missing} | {r.thread_id for r in rows}
