"""What one chat turn costs in storage: Cairn's TieredSaver against LangGraph's savers used the plain way.

Usage::

    .venv/bin/python -m bench.storage            # print the tables (about 4 minutes on 2 cores)
    .venv/bin/python -m bench.storage --write    # and update the "Storage" section of docs/PERFORMANCE.md
    .venv/bin/python -m bench.storage --quick    # histories of 10 and 100 turns only (a smoke run)
    .venv/bin/python -m bench.storage --catch-up # only the catch-up section (bench/catchup.py), ~4 minutes

Method. Every configuration holds one conversation, built turn by turn through a real graph with the same
deterministic model node (user message ~200 characters, reply ~300, both word-like text so compression does not
flatter anyone). At 10, 100 and 1,000 turns of history, N more turns (``--timed``, 15) are timed one by one:
``ainvoke`` (all the checkpoint writes of the turn) plus the ``aget_state`` read that follows, as the app does after
each reply. All conversations are built to each length first and the timed turns then go round-robin across the
configurations, so whatever else the machine does is spread evenly over them. Then ``OPENS`` cold reads ("open"):
``aget_state`` with Cairn's checkpoint cache cleared, what opening the conversation after a start costs.

- Cairn: ``TieredSaver`` (local SQLite, Postgres configured and reachable, the sync task running) with
  ``chat.state.ChatState`` (messages as a ``DeltaChannel``). Before each timed turn the sync is let drain, as it is
  while a user reads and types; the time from the end of the turn until Postgres has all of it is the "sync lag".
- The plain way: ``AsyncSqliteSaver``, ``AsyncPostgresSaver`` on a pool, ``InMemorySaver``, each with a plain
  ``MessagesState`` graph. ``AsyncSqliteSaver`` with Cairn's ``ChatState`` is included to separate what the delta
  channel saves from what the tiering costs.
- Cairn with Postgres behind ``tests.support.netproxy.TcpProxy``, at 0 ms and 50 ms of added one-way delay, alternating.

"Written per turn" is the median over the timed turns of the growth of the stored payload (SQLite: checkpoint,
metadata and write blobs; Postgres: ``octet_length`` of checkpoint and metadata JSONB, blobs and writes, i.e. what
a turn uploads before TOAST compression; memory: the serialized bytes the saver holds). "Stored" is on disk: the
SQLite file plus its WAL after ``wal_checkpoint(TRUNCATE)``, the ``pg_total_relation_size`` of every table in the
database, or the memory saver's serialized bytes.

Postgres is ``TEST_POSTGRES_URL`` when set, else a throwaway cluster from ``tests.support.pgcluster`` (fsync off).
``bench/snapshots.py`` measures the choice of ``chat.state.SNAPSHOT_EVERY``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bench.report import machine, postgres_line, write_section
from bench.report import versions as report_versions

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/storage.py` as well as `python -m bench.storage`
    sys.path.insert(0, str(ROOT))

from chat.state import SNAPSHOT_EVERY, ChatState, with_id  # noqa: E402
from storage.backends import PostgresTarget  # noqa: E402
from storage.loop import run  # noqa: E402
from storage.manager import StorageManager  # noqa: E402
from storage.tiered import TieredSaver  # noqa: E402
from tests.support.netproxy import TcpProxy  # noqa: E402
from tests.support.pgcluster import PgServer, open_test_server  # noqa: E402

DOCS = ROOT / "docs" / "PERFORMANCE.md"
SECTION = "## Storage"
COMMAND = ".venv/bin/python -m bench.storage --write"
THREAD = "bench"
CONFIG: dict[str, Any] = {"configurable": {"thread_id": THREAD}}
USER_CHARS = 200
REPLY_CHARS = 300
DELAY_HISTORY = 100
DELAY_MS = 50
OPENS = 5  # cold reads timed at each history length
KB = 1024
MB = 1024 * 1024

# Targets (pass/fail columns)
SMALL_RATIO = 1.15  # at 10 turns: tiered <= 1.15x raw AsyncSqliteSaver
LONG_RATIO = 0.5  # at 1,000 turns: tiered <= 0.5x raw AsyncSqliteSaver
DELAY_RATIO = 1.15  # tiered turn at 50 ms <= 1.15x the 0 ms one
STORED_LIMIT = 20 * MB  # each tier after 1,000 turns
UPLOAD_LIMIT = 16 * KB  # median turn's upload

WORDS = tuple(
    " ".join(
        [
            "the of and to in is that it for was on are as with they be at one have this from by hot word but what",
            "some we can out other were all there when up use your how said an each she which do their time if will",
            "way about many then them write would like so these her long make thing see him two has look more day",
            "could go come did number sound no most people my over know water than call first who may down side been",
            "now find any new work part take get place made live where after back little only round man year came",
            "show every good me give our under name very through just form sentence great think say help low line",
            "differ turn cause much mean before move right boy old too same tell does set three want air well also",
            "play small end put home read hand port large spell add even land here must big high such follow act why",
            "ask men change went light kind off need house picture try us again animal point mother world near build",
            "self earth father head stand own page should country found answer school grow study still learn plant",
            "cover food sun four between state keep eye never last let thought city tree",
        ]
    ).split()
)


def prose(seed: int, length: int) -> str:
    """Deterministic word-like text of exactly ``length`` characters."""
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


def user_text(i: int) -> str:
    head = f"Question {i}: "
    return head + prose(i, USER_CHARS - len(head))


def reply_text(question: str) -> str:
    head = f"Re: {question[:20]} "
    return head + prose(zlib.crc32(question.encode()), REPLY_CHARS - len(head))


async def model(state: dict[str, Any]) -> dict[str, Any]:
    """The one deterministic model node every configuration runs."""
    return {"messages": [with_id(AIMessage(reply_text(str(state["messages"][-1].content))))]}


def chat_graph(state_schema: type, saver: BaseCheckpointSaver[Any]) -> Any:
    graph = StateGraph(state_schema)
    graph.add_node("model", model)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile(checkpointer=saver)


async def one_turn(graph: Any, i: int) -> Any:
    await graph.ainvoke({"messages": [with_id(HumanMessage(user_text(i)))]}, CONFIG)
    return await graph.aget_state(CONFIG)


# --- what each store holds -------------------------------------------------------------------------------------


async def sqlite_payload(saver: AsyncSqliteSaver) -> int:
    async with (
        saver.lock,
        saver.conn.execute(
            "SELECT (SELECT coalesce(sum(length(checkpoint) + length(metadata)), 0) FROM checkpoints)"
            " + (SELECT coalesce(sum(length(value)), 0) FROM writes)"
        ) as cursor,
    ):
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def sqlite_on_disk(saver: AsyncSqliteSaver, path: Path) -> int:
    async with saver.lock:
        await saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return await asyncio.to_thread(_file_sizes, path)


def _file_sizes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


PG_PAYLOAD = """
SELECT (SELECT coalesce(sum(octet_length(checkpoint::text) + octet_length(metadata::text)), 0) FROM checkpoints)
     + (SELECT coalesce(sum(octet_length(blob)), 0) FROM checkpoint_blobs)
     + (SELECT coalesce(sum(octet_length(blob)), 0) FROM checkpoint_writes) AS n
"""
PG_ON_DISK = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) AS n
FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
WHERE ns.nspname = 'public' AND c.relkind = 'r'
"""


class PgMeter:
    """A direct connection (never through the proxy) for measuring a database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def value(self, sql: str) -> int:
        if self.conn is None:
            self.conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        cursor = await self.conn.execute(sql)
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


def memory_payload(saver: InMemorySaver) -> int:
    total = 0
    for namespaces in saver.storage.values():
        for checkpoints in namespaces.values():
            for checkpoint, metadata, _parent in checkpoints.values():
                total += len(checkpoint[1]) + len(metadata[1])
    for writes in saver.writes.values():
        total += sum(len(w[2][1]) for w in writes.values())
    total += sum(len(b[1]) for b in saver.blobs.values())
    return total


# --- the configurations ----------------------------------------------------------------------------------------


class Subject:
    """One configuration: a graph over a saver, and how to measure what it stored."""

    label = ""
    stores: tuple[str, ...] = ()
    graph: Any

    async def open(self) -> None: ...

    async def settle(self) -> float:
        """Wait until background work caused by the last turn is done; the seconds it took."""
        return 0.0

    def forget(self) -> None:
        """Drop what the saver keeps in memory, as when the app starts and opens the conversation."""

    async def payload(self) -> dict[str, int]:
        raise NotImplementedError

    async def on_disk(self) -> dict[str, int]:
        raise NotImplementedError

    async def close(self) -> None: ...


class Tiered(Subject):
    label = "Cairn TieredSaver (SQLite, Postgres reachable, sync on)"
    stores = ("sqlite", "postgres")

    def __init__(self, url: str, measure_url: str | None = None) -> None:
        self.url = url
        self.meter = PgMeter(measure_url or url)
        self.dir = Path(tempfile.mkdtemp(prefix="cairn-bench-"))

    async def open(self) -> None:
        target = PostgresTarget(url=self.url, pool_size=4, connect_timeout=5.0)
        self.manager = StorageManager(data_dir=self.dir, postgres=target, retry_max_seconds=1.0)
        await self.manager.start(wait_for_postgres=True)
        if self.manager.remote is None or self.manager.sqlite is None:
            raise RuntimeError(f"tiered storage did not come up: {self.manager.status()}")
        self.graph = chat_graph(ChatState, TieredSaver(self.manager))

    def forget(self) -> None:
        self.manager.cache.clear()

    @property
    def sqlite(self) -> AsyncSqliteSaver:
        assert self.manager.sqlite is not None
        return self.manager.sqlite.saver  # type: ignore[return-value]

    async def settle(self, timeout: float = 120.0) -> float:
        start = time.perf_counter()
        assert self.manager.sqlite is not None
        while await self.manager.sqlite.pending_count():
            if self.manager.remote is None:
                raise RuntimeError(f"Postgres was lost during the benchmark: {self.manager.status()}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"the sync did not drain within {timeout} s")
            await asyncio.sleep(0.002)
        return time.perf_counter() - start

    async def payload(self) -> dict[str, int]:
        return {"sqlite": await sqlite_payload(self.sqlite), "postgres": await self.meter.value(PG_PAYLOAD)}

    async def on_disk(self) -> dict[str, int]:
        assert self.manager.sqlite is not None
        return {
            "sqlite": await sqlite_on_disk(self.sqlite, self.manager.sqlite.path),
            "postgres": await self.meter.value(PG_ON_DISK),
        }

    async def close(self) -> None:
        await self.manager.close()
        await self.meter.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class RawSqlite(Subject):
    stores = ("sqlite",)

    def __init__(self, state_schema: type, label: str) -> None:
        self.state_schema = state_schema
        self.label = label
        self.dir = Path(tempfile.mkdtemp(prefix="cairn-bench-"))
        self.path = self.dir / "raw.sqlite"

    async def open(self) -> None:
        self.conn = await aiosqlite.connect(self.path)
        self.saver = AsyncSqliteSaver(self.conn)
        await self.saver.setup()  # what its first call would do; the payload queries need the tables
        self.graph = chat_graph(self.state_schema, self.saver)

    async def payload(self) -> dict[str, int]:
        return {"sqlite": await sqlite_payload(self.saver)}

    async def on_disk(self) -> dict[str, int]:
        return {"sqlite": await sqlite_on_disk(self.saver, self.path)}

    async def close(self) -> None:
        await self.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class RawPostgres(Subject):
    label = "AsyncPostgresSaver (pool), plain MessagesState"
    stores = ("postgres",)

    def __init__(self, url: str) -> None:
        self.url = url
        self.meter = PgMeter(url)

    async def open(self) -> None:
        kwargs = {"autocommit": True, "prepare_threshold": None, "row_factory": dict_row}
        self.pool = AsyncConnectionPool(self.url, min_size=1, max_size=4, kwargs=kwargs, open=False)
        await self.pool.open(wait=True, timeout=10)
        saver = AsyncPostgresSaver(self.pool)  # type: ignore[arg-type]
        await saver.setup()
        self.graph = chat_graph(MessagesState, saver)

    async def payload(self) -> dict[str, int]:
        return {"postgres": await self.meter.value(PG_PAYLOAD)}

    async def on_disk(self) -> dict[str, int]:
        return {"postgres": await self.meter.value(PG_ON_DISK)}

    async def close(self) -> None:
        await self.pool.close()
        await self.meter.close()


class Memory(Subject):
    label = "InMemorySaver, plain MessagesState"
    stores = ("memory",)

    async def open(self) -> None:
        self.saver = InMemorySaver()
        self.graph = chat_graph(MessagesState, self.saver)

    async def payload(self) -> dict[str, int]:
        return {"memory": memory_payload(self.saver)}

    async def on_disk(self) -> dict[str, int]:
        return await self.payload()


# --- measuring -------------------------------------------------------------------------------------------------


@dataclass
class Point:
    """The timed turns of one configuration at one history length."""

    label: str
    history: int
    turn_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)  # the aget_state part of the turn
    open_ms: list[float] = field(default_factory=list)  # aget_state with nothing cached: opening the conversation
    lag_ms: list[float] = field(default_factory=list)
    written: dict[str, list[int]] = field(default_factory=dict)
    on_disk: dict[str, int] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.turn_ms)


@dataclass
class Series:
    """One configuration through the whole run."""

    key: str
    subject: Subject
    label: str = ""
    points: list[Point] = field(default_factory=list)
    build_seconds: float = 0.0
    turns: int = 0
    messages_ok: bool = True
    notes: list[str] = field(default_factory=list)
    largest: tuple[int, float, int] = (0, 0.0, 0)  # Cairn: (turn, ms, bytes) of the build turn that wrote most

    def __post_init__(self) -> None:
        self.label = self.label or self.subject.label


async def timed_turn(subject: Subject, i: int, point: Point) -> None:
    await subject.settle()
    before = await subject.payload()
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    await subject.graph.ainvoke({"messages": [with_id(HumanMessage(user_text(i)))]}, CONFIG)
    read = time.perf_counter()
    await subject.graph.aget_state(CONFIG)
    end = time.perf_counter()
    point.turn_ms.append((end - start) * 1000)
    point.read_ms.append((end - read) * 1000)
    point.cpu_ms.append((time.process_time() - cpu) * 1000)
    lag = await subject.settle()
    if isinstance(subject, Tiered):
        point.lag_ms.append(lag * 1000)
    after = await subject.payload()
    for store in subject.stores:
        point.written.setdefault(store, []).append(after[store] - before[store])


async def timed_open(subject: Subject, point: Point) -> None:
    """Read the conversation with nothing cached, as the app does when it opens it after a start."""
    await subject.settle()
    subject.forget()
    gc.collect()
    start = time.perf_counter()
    await subject.graph.aget_state(CONFIG)
    point.open_ms.append((time.perf_counter() - start) * 1000)


async def build(series: Series, history: int) -> None:
    """Untimed turns up to ``history``; for Cairn, note the turn that wrote most (a snapshot turn)."""
    subject = series.subject
    start = time.perf_counter()
    while series.turns < history:
        if isinstance(subject, Tiered):
            before = await sqlite_payload(subject.sqlite)
            t0 = time.perf_counter()
            await one_turn(subject.graph, series.turns)
            ms = (time.perf_counter() - t0) * 1000
            grew = await sqlite_payload(subject.sqlite) - before
            if grew > series.largest[2]:
                series.largest = (series.turns + 1, ms, grew)
        else:
            await one_turn(subject.graph, series.turns)
        series.turns += 1
    series.build_seconds += time.perf_counter() - start


async def measure_all(
    all_series: Sequence[Series], histories: Sequence[int], timed: int, log: Callable[[str], None]
) -> None:
    """Build every conversation to each history length, then time turns round-robin across configurations.

    Round-robin (in a rotating order) spreads whatever else the machine is doing evenly over the configurations,
    so the ratios between them hold even when the absolute numbers wobble.
    """
    for history in histories:
        for series in all_series:
            log(f"  building {series.label} to {history:,} turns")
            await build(series, history)
        points = {id(s): Point(s.label, history) for s in all_series}
        for k in range(timed):
            order = list(all_series[k % len(all_series) :]) + list(all_series[: k % len(all_series)])
            for series in order:
                await timed_turn(series.subject, series.turns, points[id(series)])
                series.turns += 1
        for _ in range(OPENS):
            for series in all_series:
                await timed_open(series.subject, points[id(series)])
        for series in all_series:
            point = points[id(series)]
            await series.subject.settle()
            point.on_disk = await series.subject.on_disk()
            series.points.append(point)
            log(f"  {series.label} @ {history:,}: {point.median:.1f} ms, {fmt_stores(point.on_disk)}")


async def check_messages(series: Series) -> None:
    state = await series.subject.graph.aget_state(CONFIG)
    got = state.values.get("messages", [])
    expected = [user_text(i) for i in range(series.turns)]
    series.messages_ok = len(got) == 2 * series.turns and [m.content for m in got[::2]] == expected
    if isinstance(series.subject, Tiered) and series.subject.manager.remote is None:
        series.messages_ok = False
        series.notes.append("Postgres was lost during the run")


async def measure_delay(server: PgServer, timed: int, log: Callable[[str], None]) -> Series:
    """Cairn with Postgres behind the proxy: turns at 0 ms and 50 ms added delay, alternating."""
    url = server.create_database()
    proxy = TcpProxy(server.host, server.port)
    subject = Tiered(proxy.url_for(url), measure_url=url)
    series = Series("delay", subject, label="Cairn TieredSaver, Postgres behind TcpProxy")
    try:
        await subject.open()
        await build(series, DELAY_HISTORY)
        series.largest = (0, 0.0, 0)
        points = {ms: Point(f"{series.label}, +{ms} ms", DELAY_HISTORY) for ms in (0, DELAY_MS)}
        for k in range(timed):
            for ms in (0, DELAY_MS) if k % 2 == 0 else (DELAY_MS, 0):
                await asyncio.to_thread(proxy.delay, ms)
                await timed_turn(subject, series.turns, points[ms])
                series.turns += 1
        await asyncio.to_thread(proxy.delay, 0)
        for ms, point in points.items():
            point.on_disk = await subject.on_disk()
            series.points.append(point)
            lag = statistics.median(point.lag_ms)
            log(f"  proxy +{ms} ms @ {DELAY_HISTORY}: {point.median:.1f} ms, sync lag {lag:.0f} ms")
        await check_messages(series)
    finally:
        await subject.close()
        proxy.close()
        server.drop_database(url)
    return series


# --- reporting -------------------------------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    if n >= MB:
        return f"{n / MB:,.1f} MB"
    if n >= KB:
        return f"{n / KB:,.1f} KB"
    return f"{n:,.0f} B"


def fmt_stores(values: dict[str, int]) -> str:
    if len(values) == 1:
        return fmt_bytes(next(iter(values.values())))
    return " + ".join(f"{store} {fmt_bytes(v)}" for store, v in values.items())


def results_table(series: Sequence[Series]) -> str:
    lines = [
        "| configuration | history (turns) | turn p50 | of which aget_state | turn min–max | CPU p50 "
        "| open p50 | written per turn (p50) | stored | sync lag p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for s in series:
        for p in s.points:
            written = {store: int(statistics.median(v)) for store, v in p.written.items()}
            lag = f"{statistics.median(p.lag_ms):.0f} ms" if p.lag_ms else "–"
            opened = f"{statistics.median(p.open_ms):.1f} ms" if p.open_ms else "–"
            lines.append(
                f"| {p.label} | {p.history:,} | {p.median:.1f} ms | {statistics.median(p.read_ms):.1f} ms "
                f"| {min(p.turn_ms):.1f}–{max(p.turn_ms):.1f} ms "
                f"| {statistics.median(p.cpu_ms):.1f} ms | {opened} | {fmt_stores(written)} | {fmt_stores(p.on_disk)} "
                f"| {lag} |"
            )
    return "\n".join(lines)


@dataclass
class Target:
    name: str
    measured: str
    ok: bool | None  # None: not measured in this run


def targets(tiered: Series | None, sqlite: Series | None, delay: Series | None) -> list[Target]:
    found: list[Target] = []

    def at(s: Series | None, history: int) -> Point | None:
        return next((p for p in s.points if p.history == history), None) if s else None

    for history, ratio in ((10, SMALL_RATIO), (1000, LONG_RATIO)):
        name = f"{history:,} turns: tiered ≤ {ratio}× raw AsyncSqliteSaver"
        t, r = at(tiered, history), at(sqlite, history)
        if t and r:
            x = t.median / r.median
            found.append(Target(name, f"{t.median:.1f} / {r.median:.1f} ms = {x:.2f}×", x <= ratio))
        else:
            found.append(Target(name, "not measured", None))
    if delay and len(delay.points) == 2:
        fast, slow = delay.points
        x = slow.median / fast.median
        found.append(
            Target(
                f"tiered turn at +{DELAY_MS} ms ≤ {DELAY_RATIO}× the +0 ms one",
                f"{slow.median:.1f} / {fast.median:.1f} ms = {x:.2f}×",
                x <= DELAY_RATIO,
            )
        )
    t = at(tiered, 1000)
    if t:
        for store in ("sqlite", "postgres"):
            found.append(
                Target(
                    f"1,000 turns: {store} tier < {fmt_bytes(STORED_LIMIT)}",
                    fmt_bytes(t.on_disk[store]),
                    t.on_disk[store] < STORED_LIMIT,
                )
            )
        upload = statistics.median(t.written["postgres"])
        name = f"1,000 turns: median turn uploads < {fmt_bytes(UPLOAD_LIMIT)}"
        found.append(Target(name, fmt_bytes(upload), upload < UPLOAD_LIMIT))
    return found


def targets_table(found: Sequence[Target]) -> str:
    lines = ["| target | measured | result |", "|---|---|---|"]
    for t in found:
        result = "not run" if t.ok is None else ("PASS" if t.ok else "**FAIL**")
        lines.append(f"| {t.name} | {t.measured} | {result} |")
    return "\n".join(lines)


def versions() -> str:
    savers = ("langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres")
    return report_versions((*savers, "aiosqlite", "psycopg"))


def report(
    series: Sequence[Series],
    found: Sequence[Target],
    *,
    timed: int,
    seconds: float,
    postgres: str,
    load: tuple[float, float],
) -> str:
    notes = [f"- {s.label}: {note}" for s in series for note in s.notes]
    notes += [f"- {s.label}: history was built in {s.build_seconds:,.0f} s" for s in series if s.build_seconds]
    wrong = [s.label for s in series if not s.messages_ok]
    notes.append(
        "- every configuration ended with all its messages, in order"
        if not wrong
        else f"- **messages missing or out of order in: {', '.join(wrong)}**"
    )
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{COMMAND}` — run {datetime.date.today().isoformat()}, {seconds / 60:.1f} min.",
            f"Machine: {machine()}. Load average {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
            f"Postgres: {postgres}. Packages: {versions()}.",
            f"Cairn's messages channel: `DeltaChannel`, `SNAPSHOT_EVERY = {SNAPSHOT_EVERY}` updates"
            f" (a full snapshot every {SNAPSHOT_EVERY // 2} turns).",
            "",
            f"One turn = `ainvoke` (3 checkpoints and their writes) + the `aget_state` that follows; {timed} turns"
            " timed at each history length, round-robin across the configurations (the proxy rows: alternating"
            " +0 / +50 ms on one conversation). CPU: this process's CPU time during the turn (all its threads; not"
            " the Postgres server's). Written per turn: growth of the stored payload (for Postgres: what the turn"
            " uploads, before TOAST compression). Stored: on disk (SQLite file + WAL after a checkpoint; Postgres"
            " `pg_total_relation_size` of all tables) or, for memory, the saver's serialized bytes. Sync lag: from"
            " the end of a Cairn turn until Postgres holds all of it (the turn does not wait for it). Open: one"
            f" `aget_state` with nothing cached (Cairn's checkpoint cache cleared), as after a start; {OPENS} each.",
            "",
            results_table(series),
            "",
            "Targets:",
            "",
            targets_table(found),
            "",
            *notes,
            "",
        ]
    )


def write_docs(section: str) -> None:
    """Replace the "## Storage" section of docs/PERFORMANCE.md (other sections are kept)."""
    write_section(SECTION, section)


async def bench(server: PgServer, histories: Sequence[int], timed: int, log: Callable[[str], None]) -> list[Series]:
    all_series = [
        Series("tiered", Tiered(server.create_database())),
        Series("sqlite-delta", RawSqlite(ChatState, "AsyncSqliteSaver, Cairn's ChatState (DeltaChannel)")),
        Series("sqlite", RawSqlite(MessagesState, "AsyncSqliteSaver, plain MessagesState")),
        Series("postgres", RawPostgres(server.create_database())),
        Series("memory", Memory()),
    ]
    try:
        for series in all_series:
            await series.subject.open()
        await measure_all(all_series, histories, timed, log)
        for series in all_series:
            await check_messages(series)
    finally:
        for series in all_series:
            with contextlib.suppress(Exception):
                await series.subject.close()
            url = getattr(series.subject, "url", None)
            if url:
                await asyncio.to_thread(server.drop_database, url)
    for series in all_series:
        turn, ms, grew = series.largest
        if turn:
            series.notes.append(
                f"the build turn that wrote most was turn {turn:,}: {grew / KB:,.0f} KB locally, {ms:.0f} ms"
                " (a snapshot turn: the whole message list)"
            )
    log(f"Cairn with Postgres behind the proxy, +0 / +{DELAY_MS} ms")
    all_series.append(await measure_delay(server, timed, log))
    return all_series


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--write",
        action="store_true",
        help="update docs/PERFORMANCE.md (its Storage section; with --catch-up, that one's)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="histories of 10 and 100 turns only (--catch-up: 2,004 checkpoints, 2 runs)",
    )
    parser.add_argument("--timed", type=int, default=15, help="timed turns per history length (default 15, min 5)")
    parser.add_argument(
        "--catch-up",
        action="store_true",
        help="run only the catch-up section: a backlog and one turn uploaded, batched against one at a time",
    )
    parser.add_argument("--runs", type=int, default=None, help="catch-up: runs of the backlog upload (default 3)")
    args = parser.parse_args(argv)
    if args.catch_up:
        from bench.catchup import catch_up  # it builds on this module

        return catch_up(write=args.write, quick=args.quick, runs=args.runs)
    if args.timed < 5:
        parser.error("--timed must be at least 5")
    histories = (10, 100) if args.quick else (10, 100, 1000)
    logging.basicConfig(level=logging.ERROR)  # the storage manager's tier messages are not results

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    server = open_test_server()
    try:
        postgres = postgres_line(server.url())
        log(f"Postgres {postgres}; histories {', '.join(map(str, histories))}; {args.timed} timed turns each")
        series = run(bench(server, histories, args.timed, log))
    finally:
        server.close()
    seconds = time.perf_counter() - started
    by_key = {s.key: s for s in series}
    found = targets(by_key.get("tiered"), by_key.get("sqlite"), by_key.get("delay"))
    text = report(
        series, found, timed=args.timed, seconds=seconds, postgres=postgres, load=(load_start, os.getloadavg()[0])
    )
    print(text)
    if args.write:
        if args.quick:
            log("--quick results are not written to the docs")
        else:
            write_docs(text)
            log(f"updated {DOCS.relative_to(ROOT)}")
    return 0 if all(t.ok is not False for t in found) and all(s.messages_ok for s in series) else 1


if __name__ == "__main__":
    raise SystemExit(main())
