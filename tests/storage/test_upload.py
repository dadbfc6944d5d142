"""Catching up: a backlog written before Postgres was there reaches it in batches, exactly as LangGraph stores it.

The backlog is written through Cairn's storage with no Postgres configured (built once per module and copied for
each test), then Postgres is configured. Postgres is checked from outside the code under test: its rows with plain
connections, and its conversations through a plain LangGraph ``AsyncPostgresSaver``, compared with what the local
SQLite file holds, read by its plain ``AsyncSqliteSaver``.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
import pytest
from langchain_core.messages import AIMessage, RemoveMessage
from langgraph.checkpoint.base import WRITES_IDX_MAP
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.types import Command

from chat.state import with_id
from storage.backends import SQLITE_FILE_NAME
from storage.loop import run
from storage.manager import StorageManager
from storage.sync import PUSH_BATCH
from storage.tiered import TieredSaver
from tests.support.chatgraph import Model, build_graph, config, said, scenario_graph, turn
from tests.support.netproxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

SYNC_TIMEOUT = 10.0
"""Generous: the speed of a catch-up is measured in bench/storage.py, not here."""
RECOVERY_TIMEOUT = 20.0
LONG_TURNS = 260
"""The app's chat: 780 checkpoints, more than three upload batches, across two full message snapshots."""
MODES = ["async", "sync"]


# --- the backlog ----------------------------------------------------------------------------------------------


async def play_scenario(graph: Any, model: Model, thread_id: str) -> None:
    """Turns that leave every kind of checkpoint and write: a fork, edits, a failed step, an interrupt."""
    thread = config(thread_id)
    for i in range(5):
        await graph.ainvoke(said(f"question {i}"), thread)
    inputs = [s async for s in graph.aget_state_history(thread) if s.metadata["source"] == "input"]
    await graph.ainvoke(said("question 2, edited"), inputs[-3].config)  # a second branch from an old checkpoint
    await graph.aupdate_state(thread, {"messages": [with_id(AIMessage("kept after stop"))]}, as_node="model")
    first = (await graph.aget_state(thread)).values["messages"][0]
    await graph.aupdate_state(thread, {"messages": [RemoveMessage(id=first.id)]}, as_node="model")
    model.fail_next = True
    with contextlib.suppress(RuntimeError):
        await graph.ainvoke(said("question 6"), thread)  # an error write
    await graph.ainvoke(None, thread)
    await graph.ainvoke(said("ask question 7"), thread)  # an interrupt write, then a resume and the answer
    await graph.ainvoke(Command(resume="yes"), thread)


async def write_backlog(data_dir: Path) -> None:
    manager = StorageManager(data_dir=data_dir, postgres=None)
    await manager.start()
    try:
        saver = TieredSaver(manager)
        chat = build_graph(saver)
        for i in range(LONG_TURNS):
            await turn(chat, "long", f"turn {i}")
        model = Model()
        await play_scenario(scenario_graph(saver, model), model, "scenario")
    finally:
        await manager.close()


@pytest.fixture(scope="module")
def backlog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding a backlog no Postgres has seen (built once: a few seconds of turns)."""
    data_dir = tmp_path_factory.mktemp("backlog")
    run(write_backlog(data_dir))
    return data_dir


def copy_of(backlog: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(backlog, data_dir)
    return data_dir


# --- both sides, seen from outside ----------------------------------------------------------------------------


def sqlite_rows(data_dir: Path, query: str) -> set[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(data_dir / SQLITE_FILE_NAME)) as conn:
        return set(conn.execute(query).fetchall())


async def pg_rows(url: str, query: str, params: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(query, params)
        return set(await cursor.fetchall())


CHECKPOINT_ROWS = "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id FROM checkpoints"
WRITE_ROWS = "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, {} FROM {}"
LOCAL_WRITES = WRITE_ROWS.format("value", "writes")
PG_WRITES = WRITE_ROWS.format("blob", "checkpoint_writes")
PG_CHECKPOINTS = (
    "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint::text, metadata::text "
    "FROM checkpoints"
)
PG_BLOBS = "SELECT thread_id, checkpoint_ns, channel, version, type, blob FROM checkpoint_blobs"


async def same_rows(data_dir: Path, pg_url: str, reference_url: str) -> None:
    """Checkpoints and blobs as plain ``aput`` stored them in the reference database; every write as in the local
    file, with its task path and index."""
    assert await pg_rows(pg_url, PG_CHECKPOINTS) == await pg_rows(reference_url, PG_CHECKPOINTS)
    assert await pg_rows(pg_url, PG_BLOBS) == await pg_rows(reference_url, PG_BLOBS)
    local_writes = sqlite_rows(data_dir, LOCAL_WRITES)
    assert {w[6] for w in local_writes} >= {"messages", "__error__", "__interrupt__", "__resume__"}
    assert any(w[4] for w in local_writes)  # task paths
    assert await pg_rows(pg_url, PG_WRITES) == local_writes


async def fill_reference(data_dir: Path, url: str) -> None:
    """What LangGraph itself stores for each local checkpoint: ``aput(parent_config, checkpoint, metadata,
    checkpoint["channel_versions"])`` on a plain ``AsyncPostgresSaver``."""
    async with (
        aiosqlite.connect(data_dir / SQLITE_FILE_NAME) as conn,
        AsyncPostgresSaver.from_conn_string(url) as saver,
    ):
        await saver.setup()
        stored = [t async for t in AsyncSqliteSaver(conn).alist(None)]
        # Oldest first, as they were written: a blob is stored once per version, by the first checkpoint with it.
        for found in sorted(
            stored, key=lambda t: [t.config["configurable"][k] for k in ("thread_id", "checkpoint_id")]
        ):
            parent = {"configurable": {**found.config["configurable"]}}
            parent["configurable"].pop("checkpoint_id")
            if found.parent_config is not None:
                parent["configurable"]["checkpoint_id"] = found.parent_config["configurable"]["checkpoint_id"]
            checkpoint = found.checkpoint
            await saver.aput(parent, checkpoint, found.metadata, checkpoint["channel_versions"])


@pytest.fixture(scope="module")
def reference(backlog: Path, pg_cluster: Any) -> Iterator[str]:
    """A database holding the backlog as plain LangGraph stores it, to compare uploads with."""
    url = pg_cluster.create_database()
    run(fill_reference(backlog, url))
    yield url
    pg_cluster.ensure_running()
    pg_cluster.drop_database(url)


@contextlib.asynccontextmanager
async def plain_postgres(url: str) -> AsyncIterator[AsyncPostgresSaver]:
    async with AsyncPostgresSaver.from_conn_string(url) as saver:
        yield saver


def graphs(saver: Any) -> dict[str, Any]:
    return {"long": build_graph(saver), "scenario": scenario_graph(saver, Model())}


def as_checked(found: Any) -> tuple[Any, ...]:
    return (found.config, found.parent_config, found.metadata, found.pending_writes)


async def same_conversations(manager: StorageManager, pg_url: str, *, every: int = 1) -> None:
    """Postgres through plain LangGraph reads back what the local file does: each checkpoint's tuple, and the state
    and message history at each checkpoint of the scenario and at every ``every``-th one of the long chat, those
    around its snapshots included."""
    assert manager.sqlite is not None
    local = graphs(manager.sqlite.saver)
    async with plain_postgres(pg_url) as saver:
        remote = graphs(saver)
        snapshots = await pg_rows(
            pg_url, "SELECT checkpoint_id FROM checkpoints WHERE checkpoint -> 'channel_values' -> 'messages' = 'true'"
        )
        assert len(snapshots) >= 2  # a DeltaChannel snapshot: its blob, and `true` in the checkpoint
        for thread_id in ("long", "scenario"):
            mine = [t async for t in manager.sqlite.saver.alist(config(thread_id))]
            theirs = [t async for t in saver.alist(config(thread_id))]
            assert [as_checked(t) for t in theirs] == [as_checked(t) for t in mine]
            ids = [t.config["configurable"]["checkpoint_id"] for t in mine]
            near = {i + d for i, c in enumerate(ids) if (c,) in snapshots for d in (-1, 0, 1)}
            step = 1 if thread_id == "scenario" else every
            chosen = sorted({*range(0, len(ids), step), *near, len(ids) - 1} & set(range(len(ids))))
            for i in chosen:
                at = {"configurable": {"thread_id": thread_id, "checkpoint_id": ids[i]}}
                a = await local[thread_id].aget_state(at)
                b = await remote[thread_id].aget_state(at)
                # A Topic channel that accumulates differs between LangGraph's own SQLite and Postgres savers (the
                # list grows in place without a new version, and Postgres keeps values by version): not compared.
                a.values.pop("notes", None), b.values.pop("notes", None)
                assert (b.values, b.next, b.parent_config) == (a.values, a.next, a.parent_config), (thread_id, i)
                assert [t.interrupts for t in b.tasks] == [t.interrupts for t in a.tasks]
                history = await saver.aget_delta_channel_history(config=at, channels=["messages"])
                expected = await manager.sqlite.saver.aget_delta_channel_history(config=at, channels=["messages"])
                assert history == expected, (thread_id, i)


async def open_with_postgres(open_storage: Any, data_dir: Path, url: str, mode: str) -> StorageManager:
    storage = await open_storage(data_dir, url, prefer_async=mode == "async")
    manager: StorageManager = storage.manager
    assert manager.remote is not None and manager.remote.mode == mode, manager.status()
    return manager


async def caught_up(manager: StorageManager, data_dir: Path, pg_url: str, timeout: float) -> None:
    async def done() -> bool:
        status = manager.status()
        if status.active_tier != "postgres" or status.pending_sync:
            return False
        return await pg_rows(pg_url, CHECKPOINT_ROWS) >= sqlite_rows(data_dir, CHECKPOINT_ROWS)

    await eventually(done, timeout, f"the backlog in Postgres; status {manager.status()}")


# --- tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_backlog_arrives_as_langgraph_stores_it(
    mode: str, backlog: Path, reference: str, pg_url: str, open_storage: Any, tmp_path: Path
) -> None:
    data_dir = copy_of(backlog, tmp_path)
    total = len(sqlite_rows(data_dir, CHECKPOINT_ROWS))
    assert total > 3 * PUSH_BATCH
    manager = await open_with_postgres(open_storage, data_dir, pg_url, mode)
    await caught_up(manager, data_dir, pg_url, SYNC_TIMEOUT)
    assert manager.status().pending_sync == 0

    await same_rows(data_dir, pg_url, reference)
    await same_conversations(manager, pg_url, every=40)
    # In batches: a few connections asked of the pool for the whole backlog, not some for each checkpoint.
    assert manager.remote is not None
    requests = manager.remote.pool.get_stats()["requests_num"]
    assert requests < total / 20, requests


@pytest.mark.parametrize("mode", MODES)
async def test_repeated_upload_adds_and_changes_nothing(
    mode: str, backlog: Path, pg_url: str, open_storage: Any, tmp_path: Path
) -> None:
    """As after an upload whose acknowledgement was lost (the app quit between Postgres's commit and SQLite's)."""
    data_dir = copy_of(backlog, tmp_path)
    manager = await open_with_postgres(open_storage, data_dir, pg_url, mode)
    await caught_up(manager, data_dir, pg_url, SYNC_TIMEOUT)
    before = await pg_contents(pg_url)

    assert manager.sqlite is not None
    keys = sorted(await manager.sqlite.checkpoint_keys())
    await manager.sqlite.enqueue(keys)
    report = await manager.sync_now()
    assert report.uploaded == len(keys), report
    assert manager.status().pending_sync == 0

    after = await pg_contents(pg_url)
    assert {t: len(rows) for t, rows in after.items()} == {t: len(rows) for t, rows in before.items()}
    assert after == before


async def pg_contents(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every row sync writes, with its content; blobs and regular writes also with their physical version (ctid,
    xmin), which any rewrite changes: those are inserted once and never touched again (checkpoints and special
    writes are upserted, as LangGraph's aput and aput_writes do)."""
    return {
        "checkpoints": await pg_rows(
            url,
            "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint::text, "
            "metadata::text FROM checkpoints",
        ),
        "blobs": await pg_rows(url, "SELECT *, ctid::text, xmin::text FROM checkpoint_blobs"),
        "writes": await pg_rows(
            url,
            "SELECT *, CASE WHEN channel = ANY(%s) THEN '' ELSE ctid::text || xmin::text END FROM checkpoint_writes",
            (list(WRITES_IDX_MAP),),
        ),
        "conversations": await pg_rows(url, "SELECT thread_id, created, deleted FROM cairn_conversations"),
    }


@pytest.mark.parametrize("mode", MODES)
async def test_upload_cut_midway_resumes_and_completes(
    mode: str, backlog: Path, reference: str, pg_url: str, pg_proxy: TcpProxy, open_storage: Any, tmp_path: Path
) -> None:
    data_dir = copy_of(backlog, tmp_path)
    total = len(sqlite_rows(data_dir, CHECKPOINT_ROWS))
    local_writes = sqlite_rows(data_dir, LOCAL_WRITES)
    pg_proxy.delay(25)  # a batch then takes a round trip of 50 ms or more: time to see the upload half-way
    manager = await open_with_postgres(open_storage, data_dir, pg_proxy.url_for(pg_url), mode)

    async def half_way() -> bool:
        # At least two batches still to come: however quickly the next one commits, the cut falls before the last.
        return 0 < len(await pg_rows(pg_url, CHECKPOINT_ROWS)) < total - PUSH_BATCH

    await eventually(half_way, SYNC_TIMEOUT, "a part of the backlog in Postgres")
    pg_proxy.cut()
    arrived = await pg_rows(pg_url, CHECKPOINT_ROWS)
    assert 0 < len(arrived) < total
    # Whole batches only: each checkpoint there has every one of its writes.
    keys = {row[:3] for row in arrived}
    mine = {w for w in local_writes if w[:3] in keys}
    assert mine <= await pg_rows(pg_url, PG_WRITES)

    pg_proxy.pass_through()
    await caught_up(manager, data_dir, pg_url, RECOVERY_TIMEOUT)
    await same_rows(data_dir, pg_url, reference)
    await same_conversations(manager, pg_url, every=100)


async def test_memory_tier_backlog_uploads(pg_url: str, pg_proxy: TcpProxy, open_storage: Any) -> None:
    """No usable data folder and Postgres away: turns live in memory, and reach Postgres when it answers."""
    pg_proxy.refuse()
    storage = await open_storage(None, pg_proxy.url_for(pg_url))
    manager = storage.manager
    assert manager.status().active_tier == "memory"
    model = Model()
    await play_scenario(scenario_graph(storage.saver, model), model, "in-memory")
    memory = manager.memory
    local_keys, local_writes = await memory.checkpoint_keys(), await memory.write_keys()
    assert await memory.pending_count() == len(local_keys)

    pg_proxy.pass_through()
    manager.retry_now()

    async def uploaded() -> bool:
        return (
            manager.status().active_tier == "postgres"
            and await memory.pending_count() == 0
            and await pg_rows(pg_url, "SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints") == local_keys
        )

    await eventually(uploaded, RECOVERY_TIMEOUT, f"memory's turns in Postgres; status {manager.status()}")
    query = "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM checkpoint_writes"
    assert await pg_rows(pg_url, query) == local_writes
    async with plain_postgres(pg_url) as saver:
        theirs = scenario_graph(saver, Model())
        mine = scenario_graph(memory.saver, Model())
        thread = config("in-memory")
        states = [s async for s in mine.aget_state_history(thread)]
        assert [s.config for s in states] == [s.config async for s in theirs.aget_state_history(thread)]
        for state in states:
            other = await theirs.aget_state(state.config)
            assert (other.values, other.next, other.parent_config) == (state.values, state.next, state.parent_config)


async def test_keys_gone_from_sqlite_are_skipped(pg_url: str, open_storage: Any, tmp_path: Path) -> None:
    """An outbox entry whose checkpoint is no longer in the file (its thread deleted since) uploads nothing and is
    acknowledged; the rest of its batch goes up."""
    storage = await open_storage(tmp_path / "data", pg_url)
    manager = storage.manager
    await turn(build_graph(storage.saver), "kept", "hello")
    await caught_up(manager, tmp_path / "data", pg_url, SYNC_TIMEOUT)
    assert manager.sqlite is not None
    kept = sorted(await manager.sqlite.checkpoint_keys("kept"))
    await manager.sqlite.enqueue([("gone", "", "1f000000-0000-6000-8000-000000000000"), *kept])
    report = await manager.sync_now()
    assert report.uploaded == len(kept), report
    assert manager.status().pending_sync == 0
    assert await pg_rows(pg_url, "SELECT DISTINCT thread_id FROM checkpoints") == {("kept",)}
