"""Catch-up: how fast what was written locally reaches Postgres, the batched upload against one checkpoint at a time.

Usage (the "Storage: catch-up" section of docs/PERFORMANCE.md; the rest of ``bench.storage`` is not run)::

    .venv/bin/python -m bench.storage --catch-up            # print the tables (about 4 minutes on 2 cores)
    .venv/bin/python -m bench.storage --catch-up --write    # and update the section
    .venv/bin/python -m bench.storage --catch-up --quick    # 2,004 checkpoints, 2 runs (a smoke run, not written)

Method. A backlog of 20 conversations of 167 turns (10,020 checkpoints; the model node and message sizes of
``bench.storage``) is written through Cairn's storage with no Postgres configured, once. Each run copies that data
folder and uploads it into a new database, three ways, in turn:

- the baseline: the upload as it was, one checkpoint at a time (``sync.copy_checkpoint``: ``aget_tuple`` from
  SQLite, ``aput`` and ``aput_writes`` to Postgres, each on a connection from the pool), then the acknowledgement,
  256 keys at a time, reproduced here as ``push_one_at_a_time``;
- ``storage.sync.push``, batched (storage/upload.py), on the async pool and on the sync pool;
- the app: a ``StorageManager`` started on the folder with Postgres configured, from ``start()`` until the outbox
  is empty: connecting, setting up, the first full comparison (``reconcile``) and the upload.

One turn at +50 ms: Postgres behind ``tests.support.netproxy.TcpProxy`` adding 50 ms each way (a 100 ms round trip). A
conversation of 20 turns is uploaded first; then each timed turn (3 checkpoints and their writes) is written to
SQLite and uploaded by the old loop and by ``push``, alternately first. Then the app: a ``TieredSaver`` turn, and
the time from the end of ``ainvoke`` until the outbox is empty (the sync waits for writes to pause for 50 ms first).

Postgres is ``TEST_POSTGRES_URL`` when set, else a throwaway cluster from ``tests.support.pgcluster`` (fsync off).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from langchain_core.messages import HumanMessage

from bench.report import machine, postgres_line, write_section
from bench.storage import Tiered, chat_graph, user_text, versions
from chat.state import ChatState, with_id
from storage import sync
from storage.backends import LocalBackend, PostgresBackend, PostgresTarget, SqliteBackend
from storage.loop import run
from storage.manager import StorageManager
from storage.tiered import TieredSaver
from tests.support.netproxy import TcpProxy
from tests.support.pgcluster import PgServer, open_test_server

SECTION = "## Storage: catch-up"
COMMAND = ".venv/bin/python -m bench.storage --catch-up --write"
CONVERSATIONS = 20
TURNS = 167
QUICK_CONVERSATIONS = 4
RUNS = 3
TURN_SAMPLES = 10
DELAY_MS = 50
HISTORY = 20  # turns in the conversation the timed +50 ms turns continue

BACKLOG_LIMIT = 5.0  # seconds: 10,000 pending checkpoints in Postgres after it answers
TURN_LIMIT = 300.0  # ms: one turn's upload at +50 ms, from the end of the turn


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def push_one_at_a_time(local: LocalBackend, remote: PostgresBackend) -> int:
    """The baseline: ``sync.push`` before the batched upload (storage/upload.py), index rows aside."""
    uploaded = 0
    while True:
        keys, mark = await local.pending(sync.PUSH_BATCH)
        if not keys:
            return uploaded
        for key in keys:
            uploaded += await sync.copy_checkpoint(local, remote, key)
        await local.acknowledge(keys, mark)


async def chat_turn(graph: Any, thread_id: str, i: int) -> None:
    await graph.ainvoke({"messages": [with_id(HumanMessage(user_text(i)))]}, {"configurable": {"thread_id": thread_id}})


async def write_backlog(data_dir: Path, conversations: int) -> int:
    """Conversations written through Cairn's storage with no Postgres configured; the number of checkpoints."""
    manager = StorageManager(data_dir=data_dir, postgres=None)
    await manager.start()
    try:
        graph = chat_graph(ChatState, TieredSaver(manager))
        for c in range(conversations):
            for i in range(TURNS):
                await chat_turn(graph, f"backlog-{c}", i)
            log(f"  backlog: {c + 1}/{conversations} conversations")
        assert manager.sqlite is not None
        return await manager.sqlite.pending_count()
    finally:
        await manager.close()


async def pg_count(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute("SELECT count(*) FROM checkpoints")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


@dataclass
class Samples:
    """Seconds, one per run."""

    label: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


async def time_push(
    server: PgServer,
    template: Path,
    total: int,
    upload: Callable[[LocalBackend, PostgresBackend], Awaitable[Any]],
    *,
    prefer_async: bool = True,
) -> float:
    """Upload a copy of the backlog into a new database with ``upload``; the seconds it took."""
    work = Path(tempfile.mkdtemp(prefix="cairn-catchup-"))
    url = await asyncio.to_thread(server.create_database)
    try:
        await asyncio.to_thread(shutil.copytree, template, work / "data")
        local = await SqliteBackend.open(work / "data")
        remote = await PostgresBackend.open(PostgresTarget(url=url, pool_size=4, prefer_async=prefer_async))
        try:
            start = time.perf_counter()
            await upload(local, remote)
            seconds = time.perf_counter() - start
        finally:
            await remote.close()
            await local.close()
        if (found := await pg_count(url)) != total:
            raise RuntimeError(f"{found} of {total} checkpoints reached Postgres")
        return seconds
    finally:
        await asyncio.to_thread(server.drop_database, url)
        shutil.rmtree(work, ignore_errors=True)


async def time_app(server: PgServer, template: Path, total: int) -> float:
    """From starting the storage with Postgres configured until the outbox is empty."""
    work = Path(tempfile.mkdtemp(prefix="cairn-catchup-"))
    url = await asyncio.to_thread(server.create_database)
    try:
        await asyncio.to_thread(shutil.copytree, template, work / "data")
        manager = StorageManager(data_dir=work / "data", postgres=PostgresTarget(url=url, pool_size=4))
        start = time.perf_counter()
        await manager.start()
        try:
            assert manager.sqlite is not None
            while manager.remote is None or await manager.sqlite.pending_count():
                if time.perf_counter() - start > 300:
                    raise RuntimeError(f"the backlog did not drain: {manager.status()}")
                await asyncio.sleep(0.005)
            seconds = time.perf_counter() - start
        finally:
            await manager.close()
        if (found := await pg_count(url)) != total:
            raise RuntimeError(f"{found} of {total} checkpoints reached Postgres")
        return seconds
    finally:
        await asyncio.to_thread(server.drop_database, url)
        shutil.rmtree(work, ignore_errors=True)


async def measure_backlog(server: PgServer, template: Path, total: int, runs: int) -> list[Samples]:
    baseline = Samples("one checkpoint at a time (the old push), async pool")
    batched = Samples("batched `push`, async pool")
    batched_sync = Samples("batched `push`, sync pool (PREFER_ASYNC_POSTGRES=false)")
    app = Samples("the app: `StorageManager.start()` → outbox empty (connect, set up, reconcile, upload)")
    for r in range(runs):
        baseline.seconds.append(await time_push(server, template, total, push_one_at_a_time))
        batched.seconds.append(await time_push(server, template, total, sync.push))
        batched_sync.seconds.append(await time_push(server, template, total, sync.push, prefer_async=False))
        app.seconds.append(await time_app(server, template, total))
        log(
            f"  run {r + 1}/{runs}: baseline {baseline.seconds[-1]:.2f} s, batched {batched.seconds[-1]:.2f} s,"
            f" sync pool {batched_sync.seconds[-1]:.2f} s, app {app.seconds[-1]:.2f} s"
        )
    return [baseline, batched, batched_sync, app]


async def measure_turn(server: PgServer, samples: int) -> list[Samples]:
    """One turn's upload at +50 ms: the old loop and ``push`` alternately; then the app's sync lag."""
    baseline = Samples(f"one turn's upload at +{DELAY_MS} ms, one checkpoint at a time (the old push)")
    batched = Samples(f"one turn's upload at +{DELAY_MS} ms, batched `push`")
    app = Samples(f"the app at +{DELAY_MS} ms: end of the turn → outbox empty (50 ms quiet wait included)")
    url = await asyncio.to_thread(server.create_database)
    proxy = TcpProxy(server.host, server.port)
    work = Path(tempfile.mkdtemp(prefix="cairn-catchup-"))
    try:
        local = await SqliteBackend.open(work)
        remote = await PostgresBackend.open(PostgresTarget(url=proxy.url_for(url), pool_size=4))
        try:
            graph = chat_graph(ChatState, local.saver)
            for i in range(HISTORY):
                await chat_turn(graph, "turn", i)
            await sync.push(local, remote)
            await asyncio.to_thread(proxy.delay, DELAY_MS)
            ways = [(baseline, push_one_at_a_time), (batched, sync.push)]
            for k in range(samples):
                for series, upload in ways if k % 2 == 0 else ways[::-1]:
                    await chat_turn(graph, "turn", HISTORY + 2 * k + (series is batched))
                    start = time.perf_counter()
                    await upload(local, remote)
                    series.seconds.append(time.perf_counter() - start)
                    if await local.pending_count():
                        raise RuntimeError("a turn was left behind")
        finally:
            await remote.close()
            await local.close()
        await asyncio.to_thread(proxy.delay, 0)

        subject = Tiered(proxy.url_for(url), measure_url=url)
        await subject.open()
        try:
            for i in range(HISTORY):
                await chat_turn(subject.graph, "app", i)
            await subject.settle()
            await asyncio.to_thread(proxy.delay, DELAY_MS)
            for k in range(samples):
                await chat_turn(subject.graph, "app", HISTORY + k)
                ended = time.perf_counter()
                await subject.graph.aget_state({"configurable": {"thread_id": "app"}})  # as the app does
                await subject.settle()
                app.seconds.append(time.perf_counter() - ended)
        finally:
            await subject.close()
    finally:
        proxy.close()
        await asyncio.to_thread(server.drop_database, url)
        shutil.rmtree(work, ignore_errors=True)
    for series in (baseline, batched, app):
        log(f"  {series.label}: {series.median * 1000:.0f} ms")
    return [baseline, batched, app]


# --- reporting -------------------------------------------------------------------------------------------------


def fmt(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def table(rows: Sequence[Samples], baseline: Samples) -> str:
    lines = ["| measurement | p50 | min–max | against the baseline |", "|---|---:|---:|---:|"]
    for s in rows:
        against = "baseline" if s is baseline else f"{baseline.median / s.median:.1f}× faster"
        lines.append(f"| {s.label} | {fmt(s.median)} | {fmt(min(s.seconds))}–{fmt(max(s.seconds))} | {against} |")
    return "\n".join(lines)


def report(
    backlog: list[Samples],
    turn: list[Samples],
    *,
    conversations: int,
    total: int,
    runs: int,
    samples: int,
    minutes: float,
    postgres: str,
    load: tuple[float, float],
) -> tuple[str, bool]:
    app_backlog, app_turn = backlog[-1], turn[-1]
    backlog_ok = app_backlog.median <= BACKLOG_LIMIT
    turn_ok = app_turn.median * 1000 <= TURN_LIMIT
    targets = [
        "| target | measured (p50) | result |",
        "|---|---|---|",
        f"| {total:,} pending checkpoints all in Postgres ≤ {BACKLOG_LIMIT:.0f} s after it answers, loopback"
        f" | {fmt(app_backlog.median)} (the app, from start) | {'PASS' if backlog_ok else '**FAIL**'} |",
        f"| one turn's upload at +{DELAY_MS} ms ≤ {TURN_LIMIT:.0f} ms from the end of the turn"
        f" | {fmt(app_turn.median)} (the app) | {'PASS' if turn_ok else '**FAIL**'} |",
    ]
    text = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{COMMAND}` — run {datetime.date.today().isoformat()}, {minutes:.1f} min.",
            f"Machine: {machine()}. Load average {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
            f"Postgres: {postgres}. Packages: {versions()}.",
            "",
            f"Backlog: {conversations} conversations of {TURNS} turns,"
            f" {total:,} checkpoints, written with no Postgres configured, uploaded into a new database;"
            f" {runs} runs, each way in turn. The upload rows time `push` alone (Postgres already set up); the"
            " app row times everything from `start()`. Method: the docstring of `bench/catchup.py`.",
            "",
            table(backlog, backlog[0]),
            "",
            f"One turn (3 checkpoints and their writes) with Postgres behind `TcpProxy` adding {DELAY_MS} ms each way"
            f" (a {2 * DELAY_MS} ms round trip), {samples} turns each. The batched upload costs two round trips: the"
            " pool's check of the connection it hands out, and one pipeline with BEGIN, the rows and COMMIT.",
            "",
            table(turn, turn[0]),
            "",
            "Targets:",
            "",
            *targets,
            "",
        ]
    )
    return text, backlog_ok and turn_ok


async def bench(server: PgServer, *, quick: bool, runs: int, samples: int) -> tuple[list[Samples], list[Samples], int]:
    template = Path(tempfile.mkdtemp(prefix="cairn-backlog-"))
    try:
        log("writing the backlog")
        total = await write_backlog(template, QUICK_CONVERSATIONS if quick else CONVERSATIONS)
        log(f"{total:,} checkpoints pending; {runs} runs")
        backlog = await measure_backlog(server, template, total, runs)
    finally:
        shutil.rmtree(template, ignore_errors=True)
    log(f"one turn at +{DELAY_MS} ms, {samples} turns each")
    turn = await measure_turn(server, samples)
    return backlog, turn, total


def catch_up(*, write: bool, quick: bool, runs: int | None = None) -> int:
    """Run the section, print it, and with ``write`` (not with ``quick``) put it into docs/PERFORMANCE.md."""
    runs = runs or (2 if quick else RUNS)
    samples = 4 if quick else TURN_SAMPLES
    logging.basicConfig(level=logging.ERROR)  # the storage manager's tier messages are not results
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    server = open_test_server()
    try:
        postgres = postgres_line(server.url())
        backlog, turn, total = run(bench(server, quick=quick, runs=runs, samples=samples))
    finally:
        server.close()
    minutes = (time.perf_counter() - started) / 60
    load = (load_start, os.getloadavg()[0])
    conversations = QUICK_CONVERSATIONS if quick else CONVERSATIONS
    text, ok = report(
        backlog,
        turn,
        conversations=conversations,
        total=total,
        runs=runs,
        samples=samples,
        minutes=minutes,
        postgres=postgres,
        load=load,
    )
    print(text)
    if write:
        if quick:
            log("--quick results are not written to the docs")
        else:
            write_section(SECTION, text)
            log("updated docs/PERFORMANCE.md")
    return 0 if ok else 1
