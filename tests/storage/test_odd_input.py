"""Odd input through every tier: NUL characters, emoji, right-to-left text, a 1 MB message, NUL in titles and ids.

Every message must come back exactly as it was sent, from the tier that stored it and, for Postgres, through a plain
``AsyncPostgresSaver`` that knows nothing of Cairn. A title with NUL is cleaned (the NULs are dropped) on every tier,
because Postgres text cannot hold one and a title is not worth losing a sync over; a thread id with NUL is rejected
with ValueError, because an id changed behind the caller's back would point at another conversation.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from storage.factory import Storage
from tests.support.chatgraph import build_graph, config, messages, turn
from tests.support.places import unwritable_dir
from tests.support.waiting import eventually

NUL = "NUL\x00in\x00the\x00middle\x00"
EMOJI = (
    "family 👩\u200d👩\u200d👧\u200d👦, rainbow flag 🏳️\u200d🌈, skin tone 👍🏽, astronaut 🧑🏿\u200d🚀, "
    "keycap 1️⃣, flag 🇯🇵, variation ☺︎ vs ☺️, 😀"
)
RTL = (
    "\u200fمرحبا بالعالم\u200f and \u200eשָׁלוֹם עוֹלָם\u200e, "
    "\u202bembedded RTL\u202c, \u202eoverride\u202c, \u2067isolate\u2069, \u061cALM, أهلاً 123 שלום"
)
CONTROL = "tabs\tnew\nlines\r\nescape \x1b[31mred\x1b[0m bell\x07 del\x7f nbsp\u00a0 bom\ufeff zw\u200b"


def one_megabyte() -> str:
    """About 1 MiB of UTF-8 mixing one- to four-byte characters, NULs and a ZWJ sequence, not a run of one byte."""
    unit = "abc\x00é中\u200fمر👩\u200d👩\u200d👧 0123456789\n"
    text = unit * (1024 * 1024 // len(unit.encode()) + 1)
    assert len(text.encode()) >= 1024 * 1024
    return text


ODD = [NUL, EMOJI, RTL, CONTROL, one_megabyte(), "\x00", "plain after all that"]


def new_thread() -> str:
    return f"odd-{uuid.uuid4().hex[:8]}"


@dataclass
class Tier:
    name: str
    storage: Storage
    pg_url: str | None
    data_dir: Path


TIERS = ["sqlite", "postgres-sync", "postgres-direct", "memory"]


@pytest.fixture(params=TIERS)
async def tier(request: pytest.FixtureRequest, tmp_path: Path, open_storage: Any) -> AsyncIterator[Tier]:
    name: str = request.param
    pg_url: str | None = None
    if name.startswith("postgres"):
        pg_url = request.getfixturevalue("pg_url")
    data_dir = tmp_path / "data" if name in ("sqlite", "postgres-sync") else unwritable_dir(tmp_path)
    storage = await open_storage(data_dir, pg_url)
    expected = {"sqlite": "sqlite", "postgres-sync": "postgres", "postgres-direct": "postgres", "memory": "memory"}
    assert storage.manager.status().active_tier == expected[name], storage.manager.status()
    if name == "postgres-direct":
        assert storage.manager.write_target() is storage.manager.remote
    if name == "postgres-sync":
        assert storage.manager.write_target() is storage.manager.sqlite
    yield Tier(name, storage, pg_url, data_dir)
    await storage.close()  # before pg_url's database is dropped


async def user_and_ai(graph: Any, thread_id: str) -> tuple[list[Any], list[Any]]:
    found = await messages(graph, thread_id)
    assert [m.type for m in found] == ["human", "ai"] * (len(found) // 2)
    return [m.content for m in found[::2]], [m.content for m in found[1::2]]


async def latest_id(graph: Any, thread_id: str) -> str:
    return (await graph.aget_state(config(thread_id))).config["configurable"]["checkpoint_id"]


async def wait_synced(storage: Storage, graph: Any, thread_id: str) -> None:
    latest = await latest_id(graph, thread_id)

    async def there() -> bool:
        remote = storage.manager.remote
        return remote is not None and (thread_id, "", latest) in await remote.checkpoint_keys(thread_id)

    await eventually(there, timeout=15, message="synced to Postgres")


async def read_through_plain_postgres(pg_url: str, thread_id: str) -> tuple[list[Any], list[Any]]:
    """The thread as LangGraph's own AsyncPostgresSaver sees it, with no Cairn code in between."""
    async with await AsyncConnection.connect(
        pg_url, autocommit=True, prepare_threshold=None, row_factory=dict_row
    ) as conn:
        graph = build_graph(AsyncPostgresSaver(conn))
        return await user_and_ai(graph, thread_id)


async def all_keys(storage: Storage) -> set[tuple[str, str, str]]:
    manager = storage.manager
    keys: set[tuple[str, str, str]] = set(await manager.memory.checkpoint_keys())
    if manager.sqlite is not None and not manager.sqlite_failed:
        keys |= await manager.sqlite.checkpoint_keys()
    if manager.remote is not None:
        keys |= await manager.remote.checkpoint_keys()
    return keys


async def all_rows(storage: Storage) -> list[Any]:
    manager = storage.manager
    rows = list(await manager.memory.conversations())
    if manager.sqlite is not None and not manager.sqlite_failed:
        rows += await manager.sqlite.conversations()
    if manager.remote is not None:
        rows += await manager.remote.conversations()
    return rows


# --- messages ---------------------------------------------------------------------------------------------


async def test_odd_messages_round_trip_exactly(tier: Tier, open_storage: Any) -> None:
    graph = build_graph(tier.storage.saver)
    thread_id = new_thread()
    replies = []
    for text in ODD:
        result = await turn(graph, thread_id, text)
        replies.append(result["messages"][-1].content)

    sent, answered = await user_and_ai(graph, thread_id)
    assert sent == ODD  # exactly: every NUL, joiner, mark and the whole megabyte
    assert answered == replies
    assert answered[0].startswith("re: " + NUL[:20])  # a NUL in the model's reply survives too

    if tier.name == "sqlite":
        await tier.storage.close()
        reopened = await open_storage(tier.data_dir)
        assert await user_and_ai(build_graph(reopened.saver), thread_id) == (ODD, replies)
    if tier.name == "postgres-sync":
        await wait_synced(tier.storage, graph, thread_id)
        assert tier.storage.manager.status().last_sync_error == ""
    if tier.pg_url is not None:
        assert await read_through_plain_postgres(tier.pg_url, thread_id) == (ODD, replies)


async def test_each_odd_message_in_its_own_conversation(tier: Tier) -> None:
    graph = build_graph(tier.storage.saver)
    threads = {new_thread(): text for text in ODD}
    for thread_id, text in threads.items():
        await turn(graph, thread_id, text)
    for thread_id, text in threads.items():
        sent, answered = await user_and_ai(graph, thread_id)
        assert sent == [text]
        assert len(answered) == 1
    listed = {c.thread_id for c in await tier.storage.manager.conversations()}
    assert set(threads) <= listed
    if tier.name == "postgres-sync":
        for thread_id in threads:
            await wait_synced(tier.storage, graph, thread_id)
    if tier.pg_url is not None:
        for thread_id, text in threads.items():
            sent, _ = await read_through_plain_postgres(tier.pg_url, thread_id)
            assert sent == [text]


# --- titles -----------------------------------------------------------------------------------------------


async def test_title_with_nul_is_cleaned_on_every_tier(tier: Tier) -> None:
    manager = tier.storage.manager
    graph = build_graph(tier.storage.saver)
    thread_id = new_thread()
    await turn(graph, thread_id, "hello")

    row = await manager.update_conversation(thread_id, title="Tit\x00le \x00with NUL 👩\u200d👩\u200d👧 שלום")
    assert row.title == "Title with NUL 👩\u200d👩\u200d👧 שלום"
    row = await manager.update_conversation(thread_id, model="llama\x003")
    assert row.model == "llama3"
    assert row.title == "Title with NUL 👩\u200d👩\u200d👧 שלום"
    listed = {c.thread_id: c for c in await manager.conversations()}
    assert listed[thread_id].title == "Title with NUL 👩\u200d👩\u200d👧 שלום"
    assert listed[thread_id].model == "llama3"

    if tier.pg_url is not None:
        remote = manager.remote
        assert remote is not None

        async def title_in_postgres() -> bool:
            rows = {c.thread_id: c for c in await remote.conversations()}
            return thread_id in rows and rows[thread_id].title == "Title with NUL 👩\u200d👩\u200d👧 שלום"

        await eventually(title_in_postgres, timeout=15, message="the cleaned title reached Postgres")
        assert manager.status().last_sync_error == ""
        # and the sync is not stuck behind it: a later turn still reaches Postgres
        await turn(graph, thread_id, "after the rename")
        await wait_synced(tier.storage, graph, thread_id)
        assert manager.status().last_sync_error == ""
        sent, _ = await read_through_plain_postgres(tier.pg_url, thread_id)
        assert sent == ["hello", "after the rename"]


async def test_title_must_be_text(tier: Tier) -> None:
    thread_id = new_thread()
    await turn(build_graph(tier.storage.saver), thread_id, "hello")
    with pytest.raises(ValueError, match="title"):
        await tier.storage.manager.update_conversation(thread_id, title=None)
    with pytest.raises(ValueError, match="title"):
        await tier.storage.manager.update_conversation(thread_id, title=b"bytes")
    listed = {c.thread_id: c for c in await tier.storage.manager.conversations()}
    assert listed[thread_id].title == ""


# --- thread ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["bad\x00id", "\x00", "trailing\x00"])
async def test_thread_id_with_nul_is_rejected_and_nothing_is_written(bad: str, tier: Tier) -> None:
    storage = tier.storage
    graph = build_graph(storage.saver)
    good = new_thread()
    await turn(graph, good, "before")
    keys_before = await all_keys(storage)
    rows_before = {(r.thread_id, r.title) for r in await all_rows(storage)}

    with pytest.raises(ValueError, match="thread_id must not contain NUL"):
        await turn(graph, bad, "never stored")
    with pytest.raises(ValueError, match="thread_id must not contain NUL"):
        await graph.aget_state(config(bad))
    with pytest.raises(ValueError, match="thread_id must not contain NUL"):
        await storage.manager.update_conversation(bad, title="never stored")
    with pytest.raises(ValueError, match="thread_id must not contain NUL"):
        await storage.saver.adelete_thread(bad)

    assert await all_keys(storage) == keys_before
    assert {(r.thread_id, r.title) for r in await all_rows(storage)} == rows_before
    assert all("\x00" not in c.thread_id for c in await storage.manager.conversations())
    assert storage.manager.status().active_tier == {"postgres-sync": "postgres", "postgres-direct": "postgres"}.get(
        tier.name, tier.name
    )  # a bad id is the caller's error: no tier moved

    # no turn lost: the good conversation carries on
    await turn(graph, good, "after")
    sent, _ = await user_and_ai(graph, good)
    assert sent == ["before", "after"]
    if tier.name == "postgres-sync":
        await wait_synced(storage, graph, good)
        assert storage.manager.status().last_sync_error == ""


@pytest.mark.parametrize("bad", ["", None])  # (LangGraph itself turns an int id into text)
async def test_empty_or_non_text_thread_id_is_rejected(bad: Any, tier: Tier) -> None:
    graph = build_graph(tier.storage.saver)
    keys_before = await all_keys(tier.storage)
    with pytest.raises(ValueError, match="thread_id"):
        await turn(graph, bad, "never stored")
    assert await all_keys(tier.storage) == keys_before
