"""The evidence for ``chat.state.SNAPSHOT_EVERY``: storage against read cost, per snapshot frequency.

Usage::

    .venv/bin/python -m bench.snapshots                  # 100 200 400 1000 updates, 1,000 turns (about 3 min)
    .venv/bin/python -m bench.snapshots 200 400 --turns 600

For each frequency one conversation of ``--turns`` turns (the texts of bench/storage.py) is written through
``AsyncSqliteSaver`` with Cairn's reducer in a ``DeltaChannel`` of that frequency (the same reads and writes the
local tier does; the tiering adds nothing to either). Reported: the SQLite file after a WAL checkpoint, the largest
write of a turn (a snapshot turn: the whole message list), and the CPU time of one ``aget_state`` (best of 3) at the
end of every 5th turn: its mean over turns 101–200 (a long chat, where a rare snapshot means walking far back) and
over the second half of the conversation (whole snapshot cycles), and the maximum there (the read just before a
snapshot). A turn reads twice (``ainvoke`` loads the state, the app's ``aget_state`` reads it again).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import aiosqlite
from langchain_core.messages import AnyMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from typing_extensions import TypedDict

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.storage import CONFIG, THREAD, chat_graph, one_turn, sqlite_on_disk, sqlite_payload  # noqa: E402
from chat.state import SNAPSHOT_EVERY, messages_reducer  # noqa: E402
from storage.loop import run  # noqa: E402

MB = 1024 * 1024
KB = 1024


def state_with(frequency: int) -> type:
    """chat.state.ChatState with another snapshot frequency."""
    channel = DeltaChannel(messages_reducer, snapshot_frequency=frequency)
    return TypedDict("State", {"messages": Annotated[list[AnyMessage], channel]})  # type: ignore[operator]


async def one(frequency: int, turns: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="cairn-snapshots-"))
    path = directory / "chat.sqlite"
    conn = await aiosqlite.connect(path)
    try:
        saver = AsyncSqliteSaver(conn)
        graph = chat_graph(state_with(frequency), saver)
        await saver.setup()
        largest = 0
        started = time.perf_counter()
        for i in range(turns):
            before = await sqlite_payload(saver)
            await one_turn(graph, i)
            largest = max(largest, await sqlite_payload(saver) - before)
        build = time.perf_counter() - started
        async with conn.execute(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? ORDER BY checkpoint_id", (THREAD,)
        ) as cursor:
            ids = [r[0] for r in await cursor.fetchall()]
        reads: dict[int, float] = {}
        for t in range(5, turns + 1, 5):
            config = {"configurable": {**CONFIG["configurable"], "checkpoint_ns": "", "checkpoint_id": ids[3 * t - 1]}}
            best = []
            for _ in range(3):
                gc.collect()
                start = time.process_time()
                state = await graph.aget_state(config)
                best.append(time.process_time() - start)
            assert len(state.values["messages"]) == 2 * t
            reads[t] = min(best) * 1000
        size = await sqlite_on_disk(saver, path)
    finally:
        await conn.close()  # an open aiosqlite connection keeps the process alive
        await asyncio.to_thread(shutil.rmtree, directory, True)
    early = [v for t, v in reads.items() if 100 < t <= 200]
    late = [v for t, v in reads.items() if t > turns // 2]
    return {
        "frequency": frequency,
        "size": size,
        "largest": largest,
        "early": statistics.mean(early) if early else math.nan,
        "mean": statistics.mean(late),
        "max": max(late),
        "build": build,
    }


def table(rows: Sequence[dict[str, Any]], turns: int) -> str:
    lines = [
        f"| SNAPSHOT_EVERY (updates) | a snapshot every | SQLite after {turns:,} turns | largest turn write "
        f"| aget_state CPU, mean over turns 101–200 | mean over turns {turns // 2 + 1:,}–{turns:,} | max there |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " (current)" if r["frequency"] == SNAPSHOT_EVERY else ""
        lines.append(
            f"| {r['frequency']}{mark} | {r['frequency'] // 2} turns | {r['size'] / MB:.1f} MB "
            f"| {r['largest'] / KB:,.0f} KB | {r['early']:.1f} ms | {r['mean']:.1f} ms | {r['max']:.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.snapshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("frequencies", nargs="*", type=int, default=[100, 200, 400, 1000])
    parser.add_argument("--turns", type=int, default=1000)
    args = parser.parse_args(argv)
    rows = []
    for frequency in args.frequencies:
        row = run(one(frequency, args.turns))
        print(f"  {frequency}: built in {row['build']:.0f} s", file=sys.stderr, flush=True)
        rows.append(row)
    print(table(rows, args.turns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
