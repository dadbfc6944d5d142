"""A conversation on ``TieredSaver`` survives a restart: a new storage stack on the same data dir, with and without
Postgres, and a new process that opens the data dir the way the app does (settings -> storage.factory, on
storage.loop.run)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.chatgraph import build_graph, config, messages, turn
from tests.support.sync import (
    SYNC_TIMEOUT,
    pg_row_versions,
    plain_postgres_graph,
    state_ids,
    summary,
    until_synced,
)

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 90.0

# Run in a new process: opens the data dir as the app does and reports what it finds (and optionally takes a turn).
CHILD_SCRIPT = r"""
import json
import sys
from pathlib import Path

import keyring.backends.fail

from storage.factory import open_storage
from storage.loop import run
from storage.secrets import SecretStore
from storage.settings import load_settings
from tests.support.chatgraph import build_graph, messages, turn


async def main(data_dir: str, pg_url: str, thread_id: str, text: str) -> dict:
    environ = {
        "CAIRN_DATA_DIR": data_dir,
        "POSTGRES_DATABASE_URL": pg_url,
        "POSTGRES_CONNECT_TIMEOUT": "2",
        "POSTGRES_RETRY_MAX_SECONDS": "0.5",
    }
    settings = load_settings(environ=environ, cwd=Path(data_dir), config_dir=Path(data_dir) / "config")
    secrets = SecretStore("cairn-restart-test", backend=keyring.backends.fail.Keyring())
    storage = await open_storage(settings, secrets, wait_for_postgres=True)
    try:
        tier = storage.manager.status().active_tier
        graph = build_graph(storage.saver)
        before = await messages(graph, thread_id)
        if text:
            await turn(graph, thread_id, text)
        after = await messages(graph, thread_id)
        listed = [c.thread_id for c in await storage.manager.conversations()]
    finally:
        await storage.close()
    return {
        "tier": tier,
        "count": len(before),
        "count_after": len(after),
        "messages": [[m.type, m.id, m.content] for m in after],
        "listed": listed,
    }


print(json.dumps(run(main(*sys.argv[1:]))))
"""


async def run_child(tmp_path: Path, data_dir: Path, pg_url: str, thread_id: str, text: str = "") -> dict[str, Any]:
    script = tmp_path / "restart_child.py"
    script.write_text(CHILD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(data_dir),
        pg_url,
        thread_id,
        text,
        cwd=str(tmp_path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CHILD_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def as_lists(msgs: list[Any]) -> list[list[Any]]:
    return [list(m) for m in summary(msgs)]


async def history(graph: Any, thread_id: str) -> list[tuple[Any, ...]]:
    return [state_ids(s) async for s in graph.aget_state_history(config(thread_id))]


# --- (a) same data dir, SQLite tier ------------------------------------------------------------------------------


async def test_history_survives_restart_on_sqlite(open_storage, tmp_path: Path):
    data_dir = tmp_path / "data"
    storage = await open_storage(data_dir)
    assert storage.manager.status().active_tier == "sqlite"
    graph = build_graph(storage.saver)
    await turn(graph, "restart-a", "first words")
    await turn(graph, "restart-a", "second words")
    await turn(graph, "other", "a different conversation")
    before = summary(await messages(graph, "restart-a"))
    before_state = state_ids(await graph.aget_state(config("restart-a")))
    before_history = await history(graph, "restart-a")
    assert len(before) == 4
    await storage.close()

    storage = await open_storage(data_dir)
    assert storage.manager.status().active_tier == "sqlite"
    graph = build_graph(storage.saver)
    assert summary(await messages(graph, "restart-a")) == before
    assert state_ids(await graph.aget_state(config("restart-a"))) == before_state
    assert await history(graph, "restart-a") == before_history
    assert {c.thread_id for c in await storage.manager.conversations()} == {"restart-a", "other"}

    await turn(graph, "restart-a", "third words, after the restart")
    after = summary(await messages(graph, "restart-a"))
    assert after[:4] == before
    assert len(after) == 6
    assert after[4][0] == "human" and after[4][2] == "third words, after the restart"
    assert after[5][0] == "ai" and after[5][2].startswith("re: third words, after")
    assert len(await messages(graph, "other")) == 2


# --- (b) same data dir, Postgres tier ----------------------------------------------------------------------------


async def test_history_survives_restart_on_postgres(pg_url, open_storage, tmp_path: Path):
    data_dir = tmp_path / "data"
    storage = await open_storage(data_dir, pg_url)
    assert storage.manager.status().active_tier == "postgres"
    graph = build_graph(storage.saver)
    await turn(graph, "restart-b", "first words")
    await turn(graph, "restart-b", "second words")
    await until_synced(storage.manager, pg_url, SYNC_TIMEOUT)
    before = summary(await messages(graph, "restart-b"))
    before_history = await history(graph, "restart-b")
    versions = await pg_row_versions(pg_url)
    await storage.close()

    storage = await open_storage(data_dir, pg_url)
    assert storage.manager.status().active_tier == "postgres"
    graph = build_graph(storage.saver)
    assert summary(await messages(graph, "restart-b")) == before
    assert await history(graph, "restart-b") == before_history

    await turn(graph, "restart-b", "third words, after the restart")
    after = summary(await messages(graph, "restart-b"))
    assert after[:4] == before and len(after) == 6
    await until_synced(storage.manager, pg_url, SYNC_TIMEOUT)
    async with plain_postgres_graph(pg_url) as reference:
        assert summary(await messages(reference, "restart-b")) == after
        assert await history(reference, "restart-b") == await history(graph, "restart-b")

    # The restart re-sent nothing: every row Postgres had before it is the same physical row version now.
    now = await pg_row_versions(pg_url)
    for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
        assert versions[table] <= now[table], table


# --- (c) a new process ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_history_survives_in_a_new_process(request, open_storage, tmp_path: Path, tier: str):
    pg_url = request.getfixturevalue("pg_url") if tier == "postgres" else ""
    data_dir = tmp_path / "data"
    storage = await open_storage(data_dir, pg_url or None)
    assert storage.manager.status().active_tier == tier
    graph = build_graph(storage.saver)
    await turn(graph, "restart-c", "written by the first process")
    await turn(graph, "restart-c", "and more")
    if pg_url:
        await until_synced(storage.manager, pg_url, SYNC_TIMEOUT)
    before = as_lists(await messages(graph, "restart-c"))
    await storage.close()

    seen = await run_child(tmp_path, data_dir, pg_url, "restart-c")
    assert seen["tier"] == tier
    assert seen["count"] == 4
    assert seen["messages"] == before
    assert "restart-c" in seen["listed"]

    continued = await run_child(tmp_path, data_dir, pg_url, "restart-c", "continued in a new process")
    assert continued["count"] == 4
    assert continued["count_after"] == 6
    assert continued["messages"][:4] == before
    assert continued["messages"][4][2] == "continued in a new process"

    storage = await open_storage(data_dir, pg_url or None)
    graph = build_graph(storage.saver)
    assert as_lists(await messages(graph, "restart-c")) == continued["messages"]
    if pg_url:
        await until_synced(storage.manager, pg_url, SYNC_TIMEOUT)
        async with plain_postgres_graph(pg_url) as reference:
            assert as_lists(await messages(reference, "restart-c")) == continued["messages"]
