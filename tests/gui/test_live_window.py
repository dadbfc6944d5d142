"""Another device's changes reach an open window live, through Postgres's own notifications.

Machine A is the real app (``CairnApp``, offscreen) on its own data folder, talking to Postgres through a TCP proxy
so the test can cut it; machine B is a second, real storage stack on another data folder writing real graph turns.
Nothing in A is asked to refresh: each change must arrive by itself (LISTEN/NOTIFY, or the change-log poll when the
notification connection is gone) and be redrawn through the change feed. A second process on A's own data folder
is a real process too.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gui.main_window import MainWindow
from gui.sidebar import TITLE_ROLE
from storage.listen import LISTENER_SUFFIX
from storage.schema import APP_NAME_PREFIX
from tests.support.app import ROOT, cairn_factory, send_and_wait, window_of
from tests.support.cards import shown_text
from tests.support.chatgraph import build_graph, turn
from tests.support.devices import device
from tests.support.model_server import ModelServer
from tests.support.netproxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

WAIT = 10.0
"""Far above the seconds a live change takes, far below the minutes a missing one would."""


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as model_server:
        yield model_server


def live_state(window: MainWindow) -> str:
    if window.storage is None:
        return ""
    return str(window.storage.manager.status().tiers["postgres"].detail.get("live", ""))


def title_in_list(window: MainWindow, thread_id: str) -> str | None:
    item = window.sidebar.item_for(thread_id)
    return None if item is None else str(item.data(TITLE_ROLE))


def texts(window: MainWindow) -> list[str]:
    return [m.text for m in window.view.messages()]


async def terminate_listener(pg_url: str, device: str) -> int:
    """End A's LISTEN connection from the server's side, as a server restart or an idle-session killer would."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (APP_NAME_PREFIX + device + LISTENER_SUFFIX,),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


async def test_another_devices_changes_appear_in_the_open_window(
    pg_url: str, pg_proxy: Any, open_storage: Any, tmp_path: Path, server: Any
) -> None:
    cairn = cairn_factory(tmp_path / "a", server, settings={"POSTGRES_DATABASE_URL": pg_proxy.url_for(pg_url)})
    b = await open_storage(tmp_path / "b", pg_url)
    graph_b = build_graph(b.saver)
    async with cairn() as app:
        window = window_of(app)
        await eventually(lambda: live_state(window) == "listening", WAIT, "A listens")

        # B starts a conversation: it appears in A's list, with B's title.
        await turn(graph_b, "from-b", "hello from B")
        await b.manager.update_conversation("from-b", title="Started on B")
        await eventually(lambda: title_in_list(window, "from-b") == "Started on B", WAIT, "B's conversation listed")

        # Open in A; B continues it: the new turn appears in A's view, in place.
        window.open_conversation("from-b")
        await eventually(lambda: len(texts(window)) == 2, WAIT, "opened")
        await turn(graph_b, "from-b", "more from B")
        # (B's turn commits its steps one by one: A may show the question before the answer, then both.)
        await eventually(
            lambda: len(texts(window)) == 4 and texts(window)[2] == "more from B", WAIT, "B's turn shown in A's view"
        )

        # B renames and pins: A's list shows each.
        await b.manager.update_conversation("from-b", title="Renamed on B")
        await eventually(lambda: title_in_list(window, "from-b") == "Renamed on B", WAIT, "B's rename shown")
        await b.manager.update_conversation("from-b", pinned=True)
        await eventually(lambda: "from-b" in window.sidebar.pinned_ids(), WAIT, "B's pin shown")

        # The LISTEN connection is ended by the server: what B does meanwhile still arrives (the change log is
        # read after every reconnect), and A listens again by itself.
        assert window.storage is not None
        device = window.storage.manager.device
        assert await terminate_listener(pg_url, device) == 1
        await b.manager.update_conversation("from-b", title="While A was deaf")
        await turn(graph_b, "from-b", "said while A was deaf")
        await eventually(lambda: title_in_list(window, "from-b") == "While A was deaf", WAIT, "rename caught up")
        await eventually(lambda: len(texts(window)) == 6, WAIT, "turn caught up")
        assert texts(window)[4] == "said while A was deaf"
        await eventually(lambda: live_state(window) == "listening", WAIT, "A listens again")

        # A's whole connection to Postgres black-holed (a partition): B's changes arrive once it heals.
        pg_proxy.blackhole()
        await turn(graph_b, "other-b", "a second conversation")
        await b.manager.update_conversation("other-b", title="Made during the partition")
        pg_proxy.pass_through()
        await eventually(
            lambda: title_in_list(window, "other-b") == "Made during the partition", 30.0, "partition healed"
        )
        await eventually(lambda: live_state(window) == "listening", 30.0, "A listens after the partition")

        # B deletes the conversation open in A: A's view says so.
        await b.saver.adelete_thread("from-b")
        await eventually(lambda: window.sidebar.item_for("from-b") is None, WAIT, "deletion shown in the list")
        await eventually(lambda: window.current is None, WAIT, "the deleted conversation is closed")
        assert "deleted on another device" in shown_text(window.view)


async def test_a_second_process_on_the_same_data_folder_shows_in_an_idle_window(
    tmp_path: Path, server: Any
) -> None:
    cairn = cairn_factory(tmp_path, server)
    async with cairn() as app:
        window = window_of(app)
        await eventually(lambda: window.storage is not None, WAIT, "storage open")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.second_process",
            str(tmp_path / "data"),
            "other",
            "From process 2",
            "hi",
            cwd=ROOT,
        )
        async with asyncio.timeout(60):
            assert await process.wait() == 0
        await eventually(lambda: title_in_list(window, "other") == "From process 2", WAIT, "listed in A")
        window.open_conversation("other")
        await eventually(lambda: texts(window)[:1] == ["hi"], WAIT, "its messages open")


async def test_a_branch_taken_apart_elsewhere_does_not_replace_the_one_being_read(
    qtbot: Any, pg_cluster: Any, pg_url: str, tmp_path: Path, server: ModelServer
) -> None:
    """B (its own process, its clock an hour ahead: its ids sort after A's) continues the conversation while it
    cannot reach the server, A continues it too; when B's branch arrives, A keeps showing A's branch, says another
    version exists, and A's next message continues what A shows."""
    proxy_b = TcpProxy(pg_cluster.host, pg_cluster.port)
    cairn = cairn_factory(tmp_path / "a", server, settings={"POSTGRES_DATABASE_URL": pg_url})
    try:
        async with cairn() as app, device(tmp_path / "b", proxy_b.url_for(pg_url), "+1h") as b:
            window = window_of(app)
            await eventually(lambda: live_state(window) == "listening", WAIT, "A listens")
            thread = await send_and_wait(qtbot, window, "common ground")
            assert window.service is not None
            common = (await window.service.load(thread)).checkpoint_id
            await b.ask("wait_for", thread=thread, id=common)

            proxy_b.refuse()
            apart_b = await b.ask("turn", thread=thread, text="apart on B")
            await send_and_wait(qtbot, window, "apart on A")
            mine = texts(window)
            assert mine[2] == "apart on A" and len(mine) == 4

            proxy_b.pass_through()
            await b.ask("sync")
            assert window.storage is not None

            async def arrived() -> bool:
                assert window.storage is not None
                return len(await window.storage.manager.leaves(thread)) == 2

            await eventually(arrived, WAIT, "B's branch arrived at A")
            await eventually(lambda: window.branch_note.isVisible(), WAIT, "the other version is announced")
            assert "arrived from a device that continued it at the same time" in window.branch_note.text()
            assert texts(window) == mine  # still A's branch, not B's newer one
            assert apart_b[2] == "apart on B"

            await send_and_wait(qtbot, window, "next on A")
            assert texts(window)[:4] == mine and texts(window)[4] == "next on A"
            stored = await window.service.load(thread, window._shown_at[thread])
            assert [m.text for m in stored.messages][:5] == [*mine, "next on A"]
    finally:
        proxy_b.close()
