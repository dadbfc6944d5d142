"""Sync between the local tier and Postgres, against a real PostgreSQL server and real SQLite files.

Each test drives real graph turns through ``TieredSaver`` and checks Postgres with its own plain connections (or a
plain LangGraph ``AsyncPostgresSaver``), never through the code under test. Server outages are real: the session
cluster is stopped or killed, or a TCP proxy refuses or black-holes the traffic.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from storage.status import TierEvent
from tests.support.chatgraph import build_graph, config, messages, turn
from tests.support.sync import (
    RECOVERY_TIMEOUT,
    SYNC_TIMEOUT,
    is_synced,
    local_keys,
    needs_control,
    pg_checkpoint_keys,
    pg_fetch,
    pg_row_versions,
    pg_thread_rows,
    pg_write_keys,
    plain_postgres_graph,
    run_blocking,
    state_ids,
    summary,
    until_synced,
)
from tests.support.waiting import eventually, wait_for_status

pytestmark = pytest.mark.postgres

async def test_offline_first_then_everything_reaches_postgres(pg_cluster, pg_url, open_storage, tmp_path: Path):
    needs_control(pg_cluster)
    await run_blocking(pg_cluster.stop)
    storage = await open_storage(tmp_path / "data", pg_url)
    manager = storage.manager
    status = manager.status()
    assert status.active_tier == "sqlite", status
    assert status.tiers["postgres"].state == "down", status
    assert status.tiers["postgres"].reason, status

    graph = build_graph(storage.saver)
    threads = ("offline-a", "offline-b")
    for thread_id in threads:
        for i in range(3):
            await turn(graph, thread_id, f"{thread_id} turn {i}")
    for thread_id in threads:
        assert len(await messages(graph, thread_id)) == 6

    checkpoints, writes = await local_keys(manager)
    assert checkpoints and writes
    # True: one pending entry per checkpoint Postgres lacks, which offline is every local checkpoint.
    await eventually(
        lambda: manager.status().pending_sync == len(checkpoints),
        SYNC_TIMEOUT,
        f"pending_sync should count the {len(checkpoints)} local checkpoints, is {manager.status().pending_sync}",
    )
    assert manager.status().active_tier == "sqlite"

    await run_blocking(pg_cluster.start)
    await wait_for_status(manager, is_synced, SYNC_TIMEOUT)

    assert await pg_checkpoint_keys(pg_url) == checkpoints
    assert await pg_write_keys(pg_url) == writes
    assert manager.status().tiers["postgres"].state == "connected"

    async with plain_postgres_graph(pg_url) as reference:
        for thread_id in threads:
            mine = await graph.aget_state(config(thread_id))
            theirs = await reference.aget_state(config(thread_id))
            assert summary(theirs.values["messages"]) == summary(mine.values["messages"])
            assert state_ids(theirs) == state_ids(mine)
            mine_history = [state_ids(s) async for s in graph.aget_state_history(config(thread_id))]
            theirs_history = [state_ids(s) async for s in reference.aget_state_history(config(thread_id))]
            assert theirs_history == mine_history
            assert len(mine_history) == 9  # input + loop + model step, three turns

    # A second full sync finds nothing to do and touches no row in Postgres.
    before = await pg_row_versions(pg_url)
    assert before["checkpoints"] and before["checkpoint_writes"] and before["cairn_conversations"]
    report = await manager.sync_now()
    assert not report, report
    assert await pg_row_versions(pg_url) == before
    assert manager.status().pending_sync == 0


async def test_conversation_from_another_machine_is_listed_and_readable_offline(
    pg_cluster, pg_url, open_storage, tmp_path: Path
):
    needs_control(pg_cluster)
    # Another machine wrote a conversation before this one ever connected (no Cairn tables yet) ...
    async with plain_postgres_graph(pg_url) as elsewhere:
        await turn(elsewhere, "elsewhere-1", "hello from the other machine")
        await turn(elsewhere, "elsewhere-1", "and again")
        expected_1 = summary(await messages(elsewhere, "elsewhere-1"))
    assert len(expected_1) == 4

    storage = await open_storage(tmp_path / "data", pg_url)
    manager = storage.manager
    assert manager.status().active_tier == "postgres", manager.status()
    graph = build_graph(storage.saver)

    async def listed(thread_id: str) -> bool:
        return thread_id in {c.thread_id for c in await manager.conversations()}

    await eventually(lambda: listed("elsewhere-1"), SYNC_TIMEOUT, "elsewhere-1 in the conversation list")
    await eventually(
        lambda: _has_all(manager, pg_url, "elsewhere-1"), SYNC_TIMEOUT, "elsewhere-1 copied to SQLite"
    )
    assert summary(await messages(graph, "elsewhere-1")) == expected_1

    # ... and one more while this one runs (now with Cairn's index table and trigger in place).
    async with plain_postgres_graph(pg_url) as elsewhere:
        await turn(elsewhere, "elsewhere-2", "written while you were connected")
        expected_2 = summary(await messages(elsewhere, "elsewhere-2"))
    assert not await listed("elsewhere-2")
    report = await manager.sync_now()
    assert report.downloaded == len(await pg_checkpoint_keys(pg_url, "elsewhere-2")), report
    assert await listed("elsewhere-2")
    assert summary(await messages(graph, "elsewhere-2")) == expected_2

    # Postgres goes away: both stay readable, from the local copy, with the same messages.
    await run_blocking(pg_cluster.stop)
    assert summary(await messages(graph, "elsewhere-1")) == expected_1
    manager.retry_now()
    await wait_for_status(manager, lambda s: s.active_tier == "sqlite", RECOVERY_TIMEOUT)
    assert summary(await messages(graph, "elsewhere-1")) == expected_1
    assert summary(await messages(graph, "elsewhere-2")) == expected_2
    assert {"elsewhere-1", "elsewhere-2"} <= {c.thread_id for c in await manager.conversations()}


async def _has_all(manager: Any, pg_url: str, thread_id: str) -> bool:
    remote = await pg_checkpoint_keys(pg_url, thread_id)
    return bool(remote) and remote <= await manager.sqlite.checkpoint_keys(thread_id)


@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_postgres_lost_mid_session(pg_cluster, pg_url, open_storage, tmp_path: Path, outage: str):
    needs_control(pg_cluster)
    storage = await open_storage(tmp_path / "data", pg_url)
    manager = storage.manager
    assert manager.status().active_tier == "postgres"
    graph = build_graph(storage.saver)
    await turn(graph, "mid", "before the outage")
    await until_synced(manager, pg_url, SYNC_TIMEOUT)

    events: list[TierEvent] = []
    unsubscribe = manager.subscribe(lambda _status, event: event is not None and events.append(event))
    try:
        await run_blocking(pg_cluster.stop if outage == "stop" else pg_cluster.kill)
        await turn(graph, "mid", "during the outage")  # must not raise
        during = summary(await messages(graph, "mid"))
        assert [c for _, _, c in during][2] == "during the outage"
        assert len(during) == 4

        def demoted() -> bool:
            return any(e.previous == "postgres" and e.current == "sqlite" for e in events)

        await eventually(demoted, RECOVERY_TIMEOUT, f"a postgres -> sqlite event, got {events}")
        event = next(e for e in events if e.previous == "postgres" and e.current == "sqlite")
        assert event.reason and event.reason != "Postgres is reachable", event
        assert manager.status().active_tier == "sqlite"
        # The turn is counted as waiting (the count follows writes within a moment; the outage may be noticed first).
        await eventually(lambda: manager.status().pending_sync > 0, SYNC_TIMEOUT, "the turn counted as waiting")

        await run_blocking(pg_cluster.start)
        await until_synced(manager, pg_url, RECOVERY_TIMEOUT)
        assert any(e.previous == "sqlite" and e.current == "postgres" for e in events), events
    finally:
        unsubscribe()

    checkpoints, writes = await local_keys(manager, "mid")
    assert await pg_checkpoint_keys(pg_url, "mid") == checkpoints
    assert await pg_write_keys(pg_url, "mid") == writes
    async with plain_postgres_graph(pg_url) as reference:
        assert summary(await messages(reference, "mid")) == during


async def test_deleted_while_offline_stays_deleted(pg_cluster, pg_url, open_storage, tmp_path: Path):
    needs_control(pg_cluster)
    data_dir = tmp_path / "data"
    storage = await open_storage(data_dir, pg_url)
    manager = storage.manager
    graph = build_graph(storage.saver)
    await turn(graph, "doomed", "soon gone")
    await turn(graph, "doomed", "really")
    await turn(graph, "kept", "stays")
    await until_synced(manager, pg_url, SYNC_TIMEOUT)
    assert await pg_checkpoint_keys(pg_url, "doomed")

    await run_blocking(pg_cluster.stop)
    manager.retry_now()
    await wait_for_status(manager, lambda s: s.active_tier == "sqlite", RECOVERY_TIMEOUT)
    await storage.saver.adelete_thread("doomed")
    assert "doomed" not in {c.thread_id for c in await manager.conversations()}
    assert not await manager.sqlite.checkpoint_keys("doomed")
    # Everything else was in Postgres: what is pending now is the deletion alone.
    await eventually(lambda: manager.status().pending_sync == 1, SYNC_TIMEOUT, "the deletion counted as pending")

    await run_blocking(pg_cluster.start)
    await until_synced(manager, pg_url, RECOVERY_TIMEOUT)
    gone = {"checkpoints": 0, "checkpoint_blobs": 0, "checkpoint_writes": 0}
    assert await pg_thread_rows(pg_url, "doomed") == gone
    tombstone = await pg_fetch(pg_url, "SELECT deleted FROM cairn_conversations WHERE thread_id = 'doomed'")
    assert tombstone == [(True,)]
    assert await pg_checkpoint_keys(pg_url, "kept")

    async def still_gone(manager: Any) -> None:
        assert await pg_thread_rows(pg_url, "doomed") == gone
        assert not await manager.sqlite.checkpoint_keys("doomed")
        listed = {c.thread_id for c in await manager.conversations()}
        assert "doomed" not in listed and "kept" in listed
        assert await messages(build_graph(storage.saver), "doomed") == []

    report = await manager.sync_now()
    assert report.downloaded == 0, report
    await still_gone(manager)

    await storage.close()
    storage = await open_storage(data_dir, pg_url)
    manager = storage.manager
    await until_synced(manager, pg_url, SYNC_TIMEOUT)
    report = await manager.sync_now()
    assert report.downloaded == 0, report
    await still_gone(manager)


async def test_turn_on_a_conversation_deleted_elsewhere_does_not_bring_it_back(
    pg_url, open_storage, tmp_path: Path
):
    a = await open_storage(tmp_path / "machine-a", pg_url)
    b = await open_storage(tmp_path / "machine-b", pg_url)
    graph_a, graph_b = build_graph(a.saver), build_graph(b.saver)
    await turn(graph_a, "doomed", "hello")
    await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
    await b.manager.sync_now()
    assert len(await messages(graph_b, "doomed")) == 2

    await a.saver.adelete_thread("doomed")
    gone = {"checkpoints": 0, "checkpoint_blobs": 0, "checkpoint_writes": 0}

    async def deleted_in_postgres() -> bool:
        return await pg_thread_rows(pg_url, "doomed") == gone

    await eventually(deleted_in_postgres, SYNC_TIMEOUT, "A's deletion reached Postgres")

    # B takes a turn in the deleted conversation, before or after it hears of the deletion (live, from Postgres):
    # the turn may be uploaded first, or dropped with B's copy when the deletion arrives. Either way the
    # conversation ends gone everywhere, and stays gone.
    await turn(graph_b, "doomed", "still there?")
    await eventually(lambda: is_synced(b.manager.status()), SYNC_TIMEOUT, "B settled")
    await b.manager.sync_now()
    assert await deleted_in_postgres()
    assert not await b.manager.sqlite.checkpoint_keys("doomed")
    assert "doomed" not in {c.thread_id for c in await b.manager.conversations()}
    for storage in (a, b):
        report = await storage.manager.sync_now()
        assert report.downloaded == 0 and report.uploaded == 0, report
        assert "doomed" not in {c.thread_id for c in await storage.manager.conversations()}
    assert await deleted_in_postgres()


async def test_two_machines_continue_one_conversation_apart(pg_cluster, pg_url, open_storage, tmp_path: Path):
    needs_control(pg_cluster)
    a = await open_storage(tmp_path / "machine-a", pg_url)
    b = await open_storage(tmp_path / "machine-b", pg_url)
    graph_a, graph_b = build_graph(a.saver), build_graph(b.saver)
    await turn(graph_a, "shared", "started on A")
    await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
    await b.manager.sync_now()
    common = summary(await messages(graph_b, "shared"))
    assert common == summary(await messages(graph_a, "shared"))
    fork_point = (await graph_a.aget_state(config("shared"))).config["configurable"]["checkpoint_id"]

    # Apart: neither can reach Postgres; each continues the conversation.
    await run_blocking(pg_cluster.stop)
    await turn(graph_a, "shared", "continued on A")
    await turn(graph_b, "shared", "continued on B")
    branch_a = summary(await messages(graph_a, "shared"))
    branch_b = summary(await messages(graph_b, "shared"))
    assert branch_a[:2] == branch_b[:2] == common
    assert branch_a[2][2] == "continued on A" and branch_b[2][2] == "continued on B"
    tip_a = (await graph_a.aget_state(config("shared"))).config["configurable"]["checkpoint_id"]
    tip_b = (await graph_b.aget_state(config("shared"))).config["configurable"]["checkpoint_id"]

    # Together again.
    await run_blocking(pg_cluster.start)
    for storage in (a, b):
        storage.manager.retry_now()
    for storage in (a, b):
        await until_synced(storage.manager, pg_url, RECOVERY_TIMEOUT)
    for storage in (a, b):
        await storage.manager.sync_now()  # brings down the other's branch
    for storage in (a, b):
        assert storage.manager.status().last_sync_error == ""

    remote = await pg_checkpoint_keys(pg_url, "shared")
    assert await a.manager.sqlite.checkpoint_keys("shared") == remote
    assert await b.manager.sqlite.checkpoint_keys("shared") == remote
    assert await a.manager.sqlite.write_keys("shared") == await pg_write_keys(pg_url, "shared")

    # Both branches kept, each intact, on both machines; both show the same (newest) tip.
    newest = max(tip_a, tip_b)
    for graph in (graph_a, graph_b):
        shown = await graph.aget_state(config("shared"))
        assert shown.config["configurable"]["checkpoint_id"] == newest
        for tip, expected in ((tip_a, branch_a), (tip_b, branch_b)):
            at_tip = await graph.aget_state({"configurable": {"thread_id": "shared", "checkpoint_id": tip}})
            assert summary(at_tip.values["messages"]) == expected
        children = [
            s.config["configurable"]["checkpoint_id"]
            async for s in graph.aget_state_history(config("shared"))
            if s.parent_config and s.parent_config["configurable"]["checkpoint_id"] == fork_point
        ]
        assert len(children) == 2, children

    # And the conversation goes on from the newest branch, without error, and syncs.
    await turn(graph_a, "shared", "after the reunion")
    after = summary(await messages(graph_a, "shared"))
    assert after[:4] == (branch_a if newest == tip_a else branch_b)
    await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
    await b.manager.sync_now()
    assert summary(await messages(graph_b, "shared")) == after


async def test_blackholed_postgres_is_off_the_turn_path(pg_cluster, pg_url, pg_proxy, open_storage, tmp_path: Path):
    url = pg_proxy.url_for(pg_url)
    # A turn that waited on the silent server would take the connect timeout at least (10 s) or hang until TCP gives
    # up: 3 s separates that from a slow machine.
    storage = await open_storage(tmp_path / "data", url, connect_timeout=10.0)
    manager = storage.manager
    assert manager.status().active_tier == "postgres"
    graph = build_graph(storage.saver)
    await turn(graph, "partition", "before")
    await until_synced(manager, pg_url, SYNC_TIMEOUT)

    pg_proxy.blackhole()
    for i in range(3):
        started = time.monotonic()
        await turn(graph, "partition", f"during {i}")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, f"turn {i} took {elapsed:.2f} s with Postgres black-holed"
    # While the upload hangs, the status counts what Postgres (asked directly) lacks, not the count from before.
    checkpoints, _ = await local_keys(manager, "partition")
    missing = len(checkpoints - await pg_checkpoint_keys(pg_url, "partition"))
    assert missing == 9  # three turns of three checkpoints each
    await eventually(
        lambda: manager.status().pending_sync == missing, 5.0, f"pending_sync {missing}: {manager.status()}"
    )
    started = time.monotonic()
    listed = {c.thread_id for c in await manager.conversations()}
    assert time.monotonic() - started < 3.0
    assert "partition" in listed
    expected = summary(await messages(graph, "partition"))
    assert len(expected) == 8

    # The partition is noticed without any user action, and healed the same way.
    await wait_for_status(manager, lambda s: s.active_tier == "sqlite", RECOVERY_TIMEOUT)
    pg_proxy.pass_through()
    await until_synced(manager, pg_url, RECOVERY_TIMEOUT)
    checkpoints, _ = await local_keys(manager, "partition")
    assert await pg_checkpoint_keys(pg_url, "partition") == checkpoints
    async with plain_postgres_graph(pg_url) as reference:
        assert summary(await messages(reference, "partition")) == expected


async def test_connection_lost_in_silence_does_not_wedge_sync(pg_url, pg_proxy, open_storage, tmp_path: Path):
    """The laptop changes network: connections on the old route are silent forever, new ones work. The sync
    must not stay stuck on an old connection (TCP would give up only after about 15 minutes)."""
    storage = await open_storage(tmp_path / "data", pg_proxy.url_for(pg_url))
    manager = storage.manager
    graph = build_graph(storage.saver)
    await turn(graph, "roaming", "on the old network")
    await until_synced(manager, pg_url, SYNC_TIMEOUT)

    pg_proxy.blackhole()  # the old route, never to answer again
    await turn(graph, "roaming", "between networks")
    await wait_for_status(manager, lambda s: s.active_tier == "sqlite", RECOVERY_TIMEOUT)

    # The new route reaches the same server; the proxy keeps black-holing whatever still uses the old one.
    assert manager.target is not None
    manager.target = dataclasses.replace(manager.target, url=pg_url)
    manager.retry_now()
    await until_synced(manager, pg_url, SYNC_TIMEOUT)
    async with plain_postgres_graph(pg_url) as reference:
        assert summary(await messages(reference, "roaming")) == summary(await messages(graph, "roaming"))
