"""storage/sync.py on its own: a real SQLite file and a real Postgres, no manager, no window.

The manager-level behaviour (outages, two machines live, healing) is in tests/storage/test_manager_sync.py and
tests/storage/test_healing.py;
here each function of the module is held to its contract: copies are unions and idempotent, uploads and downloads
leave both sides holding the same keys, tombstones win, and every local change is reported."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import sync
from storage.backends import PostgresBackend, PostgresTarget, SqliteBackend
from storage.changes import Changes
from storage.conversations import Conversation
from tests.support.chatgraph import build_graph, messages, turn


@pytest.fixture
async def sides(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[SqliteBackend, PostgresBackend]]:
    local = await SqliteBackend.open(tmp_path)
    remote = await PostgresBackend.open(PostgresTarget(url=pg_url, connect_timeout=5))
    try:
        yield local, remote
    finally:
        await local.close()
        await remote.close()


class Heard:
    """What ``report_change`` and ``hold`` were told."""

    def __init__(self) -> None:
        self.changes: list[Changes] = []
        self.held: list[set[str]] = []

    def report(self, changes: Changes) -> None:
        self.changes.append(changes)

    @contextlib.asynccontextmanager
    async def hold(self, threads: set[str]) -> AsyncIterator[None]:
        self.held.append(set(threads))
        yield

    def turns(self) -> set[str]:
        return {t for c in self.changes for t in c.turns}

    def removed(self) -> set[str]:
        return {t for c in self.changes for t in c.removed}


async def _texts(backend: SqliteBackend | PostgresBackend, thread_id: str) -> list[str]:
    return [str(m.content) for m in await messages(build_graph(backend.saver), thread_id)]


async def test_copy_checkpoint_is_a_union_and_idempotent(sides: tuple[SqliteBackend, PostgresBackend]) -> None:
    local, remote = sides
    await turn(build_graph(local.saver), "t", "hello")
    keys = sorted(await local.checkpoint_keys("t"))
    for _ in range(2):  # copying again changes nothing
        for key in keys:
            assert await sync.copy_checkpoint(local, remote, key)
        assert await remote.checkpoint_keys("t") == set(keys)
        assert await remote.write_keys("t") == await local.write_keys("t")
    assert await _texts(remote, "t") == await _texts(local, "t")
    assert not await sync.copy_checkpoint(local, remote, ("t", "", "1f0-not-there"))


async def test_push_uploads_the_outbox_and_empties_it(sides: tuple[SqliteBackend, PostgresBackend]) -> None:
    local, remote = sides
    graph = build_graph(local.saver)
    for n in range(3):
        await turn(graph, f"t{n}", f"message {n}")
    assert await local.pending_count() > 0

    report = await sync.push(local, remote)

    assert report.uploaded == len(await local.checkpoint_keys())
    assert await local.pending_count() == 0
    assert await remote.checkpoint_keys() == await local.checkpoint_keys()
    assert await remote.write_keys() == await local.write_keys()
    assert await _texts(remote, "t2") == await _texts(local, "t2")
    assert not await sync.push(local, remote)  # nothing left: an empty report


async def test_push_sends_index_changes_and_deletions_first(sides: tuple[SqliteBackend, PostgresBackend]) -> None:
    local, remote = sides
    graph = build_graph(local.saver)
    await turn(graph, "kept", "keep me")
    await turn(graph, "gone", "delete me")
    await sync.push(local, remote)
    await local.update_conversation("kept", title="Renamed here", pinned=True)
    await local.update_conversation("gone", deleted=True)

    report = await sync.push(local, remote)

    assert report.deleted_threads == 1 and report.index_rows == 2
    kept = await remote.conversation("kept")
    assert kept is not None and (kept.title, kept.pinned) == ("Renamed here", True)
    gone = await remote.conversation("gone")
    assert gone is not None and gone.deleted
    assert not await remote.checkpoint_keys("gone")
    assert await local.dirty_conversations() == []


async def test_reconcile_leaves_both_sides_with_the_union(sides: tuple[SqliteBackend, PostgresBackend]) -> None:
    local, remote = sides
    await turn(build_graph(local.saver), "mine", "written here")
    await turn(build_graph(remote.saver), "theirs", "written elsewhere")
    heard = Heard()

    report = await sync.reconcile(local, remote, heard.report, heard.hold)

    assert report.downloaded == len(await remote.checkpoint_keys("theirs"))
    assert report.uploaded == len(await local.checkpoint_keys("mine"))
    assert await local.checkpoint_keys() == await remote.checkpoint_keys()
    assert await local.write_keys() == await remote.write_keys()
    assert await _texts(local, "theirs") == await _texts(remote, "theirs")
    assert heard.turns() == {"theirs"} and heard.held == [{"theirs"}]
    listed = {c.thread_id for c in await local.conversations()}
    assert listed == {"mine", "theirs"}
    assert await local.pending_count() == 0  # what came down is not queued to go back up
    assert not await sync.reconcile(local, remote)  # settled: a second comparison finds nothing


async def test_reconcile_honours_a_deletion_from_either_side(sides: tuple[SqliteBackend, PostgresBackend]) -> None:
    local, remote = sides
    await turn(build_graph(local.saver), "here", "deleted here later")
    await turn(build_graph(local.saver), "there", "deleted there later")
    await sync.reconcile(local, remote)
    await local.delete_thread("here")  # as StorageManager.delete_thread does: the turns, then a tombstone
    await local.update_conversation("here", deleted=True)
    row = await remote.conversation("there")
    assert row is not None
    await remote.merge_conversations([Conversation("there", meta_changed=row.meta_changed + 1, deleted=True)])
    await remote.delete_thread("there")
    heard = Heard()

    await sync.reconcile(local, remote, heard.report, heard.hold)

    for side in (local, remote):
        assert not await side.checkpoint_keys("here") and not await side.checkpoint_keys("there")
        assert all(c.deleted for c in await side.conversations())
    assert heard.removed() == {"there"}


async def test_reconcile_heals_index_rows_an_empty_server_lacks(sides: tuple[SqliteBackend, PostgresBackend]) -> None:
    local, remote = sides
    await turn(build_graph(local.saver), "t", "hello")
    await local.update_conversation("t", title="My title", pinned=True)
    await local.mark_clean(await local.conversation("t"))  # as if it had been uploaded to a server since replaced

    await sync.reconcile(local, remote)

    row = await remote.conversation("t")
    assert row is not None and (row.title, row.pinned) == ("My title", True)


async def test_pull_thread_brings_down_that_thread_only(sides: tuple[SqliteBackend, PostgresBackend]) -> None:
    local, remote = sides
    await turn(build_graph(remote.saver), "wanted", "pull me")
    await turn(build_graph(remote.saver), "other", "not now")
    heard = Heard()

    report = await sync.pull_thread(local, remote, "wanted", heard.report, heard.hold)

    assert report.downloaded == len(await remote.checkpoint_keys("wanted"))
    assert await local.checkpoint_keys("wanted") == await remote.checkpoint_keys("wanted")
    assert not await local.checkpoint_keys("other")
    assert await _texts(local, "wanted") == await _texts(remote, "wanted")
    assert heard.turns() == {"wanted"} and heard.held == [{"wanted"}]
    assert not await sync.pull_thread(local, remote, "wanted")


async def test_pull_thread_applies_a_deletion(sides: tuple[SqliteBackend, PostgresBackend]) -> None:
    local, remote = sides
    await turn(build_graph(local.saver), "t", "deleted elsewhere")
    await sync.push(local, remote)
    row = await remote.conversation("t")
    assert row is not None
    await remote.merge_conversations([Conversation("t", meta_changed=row.meta_changed + 1, deleted=True)])
    heard = Heard()

    report = await sync.pull_thread(local, remote, "t", heard.report)

    assert report.deleted_threads == 1
    assert not await local.checkpoint_keys("t")
    mine = await local.conversation("t")
    assert mine is not None and mine.deleted
    assert heard.removed() == {"t"}


@pytest.mark.parametrize(
    ("mine", "theirs", "upload", "download"),
    [
        (Conversation("t", meta_changed=2), None, True, False),
        (None, Conversation("t", meta_changed=2), False, True),
        (Conversation("t", meta_changed=2), Conversation("t", meta_changed=1), True, False),
        (Conversation("t", meta_changed=1), Conversation("t", meta_changed=2), False, True),
        (Conversation("t", meta_changed=1, deleted=True), Conversation("t", meta_changed=1), True, False),
        # ``updated`` alone never moves a row either way: each side's trigger stamps its own.
        (Conversation("t", meta_changed=1, updated=5), Conversation("t", meta_changed=1, updated=9), False, False),
    ],
)
def test_which_index_rows_move(
    mine: Conversation | None, theirs: Conversation | None, upload: bool, download: bool
) -> None:
    if mine is not None:
        assert sync._needs_upload(mine, theirs) is upload
    if theirs is not None:
        assert sync._is_newer(theirs, mine) is download
