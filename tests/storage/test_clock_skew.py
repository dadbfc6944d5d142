"""Devices whose clocks disagree: no turn is hidden, and every checkpoint sorts after the one it continues.

Machine A is a storage stack in this process; machine B is its own process (``tests.support.device``) run under
libfaketime
(Debian's ``faketime``), so B's wall clock is an hour behind or ahead without anything in Cairn's code knowing.
Both use one real Postgres, each through its own TCP proxy so the test can take them offline apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from chat.endpoints import Endpoint
from chat.service import ConversationService
from storage import clock
from tests.support.chatgraph import build_graph, messages, turn
from tests.support.device import bad_order, latest
from tests.support.devices import (
    device,
)
from tests.support.model_server import ModelServer
from tests.support.netproxy import TcpProxy
from tests.support.sync import SYNC_TIMEOUT, until_synced
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
WAIT = 15.0


def texts(msgs: list[Any]) -> list[str]:
    return [str(m.content) for m in msgs]


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as model_server:
        yield model_server


@pytest.mark.parametrize("offset", ["-1h", "+1h", "-24h", "+24h"])
async def test_a_device_with_its_clock_off_hides_no_turn(
    pg_url: str, open_storage: Any, tmp_path: Path, offset: str
) -> None:
    a = await open_storage(tmp_path / "a", pg_url)
    graph_a = build_graph(a.saver)
    async with device(tmp_path / "b", pg_url, offset) as b:
        await turn(graph_a, "t", "a0")
        await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
        assert (await b.ask("wait_for", thread="t", id=await latest(graph_a, "t")))[-2:-1] == ["a0"]
        for i in range(3):
            # B continues: B shows its own new turn (not A's older one) ...
            shown_b = await b.ask("turn", thread="t", text=f"b{i}")
            assert shown_b[-2] == f"b{i}", shown_b
            assert await b.ask("order", thread="t") == []

            # ... and so does A, live: B's newest checkpoint becomes the one A shows.
            newest_b = await b.ask("latest", thread="t")

            async def a_shows(checkpoint_id: str = newest_b) -> bool:
                return await latest(graph_a, "t") == checkpoint_id

            await eventually(a_shows, WAIT, f"A shows B's turn b{i}")
            assert texts(await messages(graph_a, "t")) == shown_b
            # A continues B's turn (not a fork off its own older one): A shows its turn after B's, and so does B.
            await turn(graph_a, "t", f"a{i + 1}")
            mine = texts(await messages(graph_a, "t"))
            assert mine[:-2] == shown_b and mine[-2] == f"a{i + 1}", mine
            assert await bad_order(a.manager, "t") == []
            seen = await b.ask("wait_for", thread="t", id=await latest(graph_a, "t"))
            assert seen == mine, seen
        assert len(await a.manager.leaves("t")) == 1  # one line of turns: nothing forked
        assert await b.ask("leaves", thread="t") == sorted(await a.manager.leaves("t"))


async def test_turns_taken_apart_keep_both_branches_one_shown_the_other_announced(
    pg_url: str, open_storage: Any, tmp_path: Path, server: ModelServer
) -> None:
    proxy_a, proxy_b = TcpProxy(*host_port(pg_url)), TcpProxy(*host_port(pg_url))
    try:
        a = await open_storage(tmp_path / "a", proxy_a.url_for(pg_url))
        graph_a = build_graph(a.saver)
        async with device(tmp_path / "b", proxy_b.url_for(pg_url), "-1h") as b:
            await turn(graph_a, "t", "together")
            await until_synced(a.manager, pg_url, SYNC_TIMEOUT)
            assert (await b.ask("wait_for", thread="t", id=await latest(graph_a, "t")))[-2:-1] == ["together"]

            proxy_a.refuse()
            proxy_b.refuse()
            await eventually(lambda: a.manager.status().active_tier == "sqlite", WAIT, "A offline")
            await turn(graph_a, "t", "apart on A")
            branch_a = texts(await messages(graph_a, "t"))
            branch_b = await b.ask("turn", thread="t", text="apart on B")
            assert branch_a[:2] == branch_b[:2] and branch_a[2] == "apart on A" and branch_b[2] == "apart on B"

            proxy_a.pass_through()
            proxy_b.pass_through()
            a.manager.retry_now()
            await until_synced(a.manager, pg_url, WAIT)
            await b.ask("sync")
            await a.manager.sync_now()

            leaves = await a.manager.leaves("t")
            assert len(leaves) == 2 and sorted(leaves) == await b.ask("leaves", thread="t")
            # Both branches reachable, on both devices; both devices show the same one.
            for leaf in leaves:
                at = await graph_a.aget_state({"configurable": {"thread_id": "t", "checkpoint_id": leaf}})
                assert texts(at.values["messages"]) in (branch_a, branch_b)
            assert await b.ask("messages", thread="t") == texts(await messages(graph_a, "t"))
            assert await bad_order(a.manager, "t") == [] and await b.ask("order", thread="t") == []
            # The conversation says another branch exists.
            service = ConversationService(a, Endpoint(server.base_url, "test-model"))
            view = await service.load("t")
            assert view.other_branches == 1
            assert [m.text for m in view.messages] in (branch_a, branch_b)
    finally:
        proxy_a.close()
        proxy_b.close()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def test_the_clock_lever_still_works() -> None:
    """The floor LangGraph's uuid6 keeps is a private name: a LangGraph upgrade that changes it fails here."""
    clock.check_lever()
    from langgraph.checkpoint.base.id import uuid6

    now = str(uuid6())
    ahead = (clock.stamp(now) or 0) + 36_000_000_000  # an hour of 100 ns ticks
    seen = f"{ahead >> 28:08x}-{(ahead >> 12) & 0xFFFF:04x}-6{ahead & 0xFFF:03x}-8000-000000000000"
    assert clock.stamp(seen) == ahead
    clock.observe(seen)
    assert str(uuid6()) > seen
