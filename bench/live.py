"""How fast another device's turn reaches this one: its local store, and its open window.

Usage::

    .venv/bin/python -m bench.live            # print the table (about a minute on 2 cores)
    .venv/bin/python -m bench.live --write    # and update the "Live sync" section of docs/PERFORMANCE.md
    .venv/bin/python -m bench.live --turns 10 # fewer turns (a smoke run)

Everything is real: a throwaway PostgreSQL cluster (``tests.support.pgcluster``) on loopback; machine B is a storage
stack
(``StorageManager`` + ``TieredSaver``) on its own data folder taking turns of the chat graph of
``tests.support.chatgraph``;
machine A is the same stack on another folder, and then the whole app (``gui.app.CairnApp`` with its window,
offscreen Qt, on the selector qasync loop) with B's conversation open. Both share this process and its loop (two
machines would not share a CPU: the numbers are, if anything, pessimistic).

- Store: from the end of B's turn (``ainvoke`` returned: the turn is in B's SQLite) until A's SQLite holds B's last
  checkpoint of it, heard through A's change feed. Baseline in the same run: the same with A's LISTEN switched off,
  so that only the change-log poll (every 2 s) brings the turn (before live sync, only a full comparison every
  60 s did).
- Window: from the end of B's turn until A's open conversation shows the reply.

Each figure is the median and the 95th percentile over the turns; the first turn of each series is left out (it
pays for connections and imports).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from bench.report import machine, versions, write_section  # noqa: E402

HEADING = "## Live sync"


@dataclass
class Series:
    name: str
    seconds: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        data = sorted(self.seconds[1:] or self.seconds)
        return data[min(len(data) - 1, round(q * (len(data) - 1)))]

    def row(self) -> str:
        return (
            f"| {self.name} | {len(self.seconds) - 1} | {statistics.median(self.seconds[1:]) * 1000:.0f} ms "
            f"| {self.quantile(0.95) * 1000:.0f} ms | {max(self.seconds[1:]) * 1000:.0f} ms |"
        )


async def store_latency(url: str, base: Path, turns: int, *, live: bool, log: Callable[[str], None]) -> Series:
    from storage.backends import PostgresTarget
    from storage.changes import Changes
    from storage.manager import StorageManager
    from storage.tiered import TieredSaver
    from tests.support.chatgraph import build_graph, turn
    from tests.support.waiting import eventually

    def stack(name: str, *, listen: bool) -> StorageManager:
        target = PostgresTarget(url=url, pool_size=4, connect_timeout=2.0)
        return StorageManager(data_dir=base / name, postgres=target, retry_max_seconds=0.5, live=listen)

    a, b = stack("a", listen=live), stack("b", listen=True)
    await a.start(wait_for_postgres=True)
    await b.start(wait_for_postgres=True)
    series = Series("A's local store, listening" if live else "A's local store, polling only (baseline)")
    try:
        if live:
            await eventually(lambda: a.status().tiers["postgres"].detail.get("live") == "listening", 30, "listening")
        graph = build_graph(TieredSaver(b))
        arrived = asyncio.Event()
        want: set[tuple[str, str, str]] = set()

        async def check(_change: Changes) -> None:
            assert a.sqlite is not None
            if want and want <= await a.sqlite.checkpoint_keys("t"):
                arrived.set()

        a.subscribe_changes(lambda change: asyncio.ensure_future(check(change)))
        for i in range(turns + 1):
            arrived.clear()
            await turn(graph, "t", f"turn {i}")
            ended = time.perf_counter()
            assert b.sqlite is not None
            want = await b.sqlite.checkpoint_keys("t")
            await check(Changes())
            async with asyncio.timeout(30):
                await arrived.wait()
            series.seconds.append(time.perf_counter() - ended)
        log(f"  {series.name}: median {statistics.median(series.seconds[1:]) * 1000:.0f} ms")
    finally:
        await a.close()
        await b.close()
    return series


async def window_latency(url: str, base: Path, turns: int, log: Callable[[str], None]) -> Series:
    from PySide6.QtWidgets import QApplication

    from gui.app import CairnApp
    from storage.backends import PostgresTarget
    from storage.manager import StorageManager
    from storage.secrets import SecretStore
    from storage.settings import load_settings, save_settings
    from storage.tiered import TieredSaver
    from tests.support.app import quit_app
    from tests.support.chatgraph import build_graph, turn
    from tests.support.keyring_backend import MemoryKeyring
    from tests.support.model_server import ModelServer
    from tests.support.waiting import eventually

    series = Series("A's open window, listening")
    keyring = MemoryKeyring()
    config = base / "config"
    with ModelServer() as server:
        save_settings(
            {
                "MODEL_BASE_URL": server.base_url,
                "MODEL_NAME": "test-model",
                "CAIRN_DATA_DIR": str(base / "app"),
                "POSTGRES_DATABASE_URL": url,
            },
            config_dir=config,
            secrets=SecretStore(backend=keyring),
        )
        settings = load_settings(environ={}, cwd=base, config_dir=config, strict=False)
        qt = QApplication.instance()
        assert isinstance(qt, QApplication)
        cairn = CairnApp(qt, settings=settings, secrets=SecretStore(backend=keyring))
        b = StorageManager(data_dir=base / "b2", postgres=PostgresTarget(url=url, connect_timeout=2.0))
        await b.start(wait_for_postgres=True)
        try:
            window = await cairn.start()
            graph = build_graph(TieredSaver(b))
            await turn(graph, "w", "first")
            await eventually(lambda: window.sidebar.item_for("w") is not None, 30, "listed")
            window.open_conversation("w")
            await eventually(lambda: len(window.view.messages()) == 2, 30, "opened")
            for i in range(turns + 1):
                await turn(graph, "w", f"turn {i}")
                ended = time.perf_counter()
                expected = 2 * (i + 2)
                deadline = ended + 30
                while len(window.view.messages()) != expected or window.view.messages()[-2].text != f"turn {i}":
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"turn {i} never shown")
                    await asyncio.sleep(0.005)  # a poll of what the window shows, 5 ms apart
                series.seconds.append(time.perf_counter() - ended)
            log(f"  {series.name}: median {statistics.median(series.seconds[1:]) * 1000:.0f} ms")
        finally:
            await quit_app(cairn)
            await b.close()
    return series


def run(turns: int, log: Callable[[str], None]) -> list[Series]:
    from PySide6.QtWidgets import QApplication

    from storage.loop import new_qt_loop
    from tests.support.pgcluster import open_test_server

    qt = QApplication.instance() or QApplication(["cairn-bench"])
    assert isinstance(qt, QApplication)
    qt.setQuitOnLastWindowClosed(False)
    loop = new_qt_loop(qt)
    asyncio.set_event_loop(loop)
    server = open_test_server()
    try:
        with tempfile.TemporaryDirectory(prefix="cairn-bench-live-") as tmp:
            base = Path(tmp)

            async def main() -> list[Series]:
                found = []
                for live in (True, False):
                    url = server.create_database()
                    found.append(await store_latency(url, base / f"store-{live}", turns, live=live, log=log))
                found.append(await window_latency(server.create_database(), base / "window", turns, log))
                return found

            return loop.run_until_complete(main())
    finally:
        loop.close()
        server.close()


def report(series: Sequence[Series], turns: int, command: str) -> str:
    rows = "\n".join(s.row() for s in series)
    return f"""{HEADING}

`{command}` — {machine()}; {versions(("langgraph", "langgraph-checkpoint-postgres", "psycopg", "PySide6-Essentials"))}.

Machine B (a storage stack) takes a turn; the time until machine A (another stack, then the whole app with the
conversation open, offscreen) has it. One PostgreSQL on loopback; both machines in one process. {turns} turns per
series after one warm-up turn.

| from the end of B's turn until | turns | median | p95 | max |
|---|---|---|---|---|
{rows}

Targets (issue: multi-device you can trust): in A's local store ≤ 1 s p95, in A's open window ≤ 2 s p95. The
baseline polls the change log every 2 s (what A does when notifications cannot arrive); before live sync, a turn
from another device arrived only with the full comparison every 60 s and never reached an open window.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update the Live sync section of docs/PERFORMANCE.md")
    parser.add_argument("--turns", type=int, default=30, help="timed turns per series (default 30)")
    args = parser.parse_args(argv)
    command = "python -m bench.live" + (f" --turns {args.turns}" if args.turns != 30 else "")
    series = run(max(3, args.turns), lambda line: print(line, file=sys.stderr, flush=True))
    section = report(series, args.turns, command)
    print(section)
    if args.write:
        write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
