"""Another device as its own process: ``python -m tests.support.device DATA_DIR POSTGRES_URL``, driven line by line.

Run under libfaketime (Debian's ``faketime -f -1h python -m tests.support.device ...``) it is a machine whose clock
is off,
without touching Cairn's code. It opens the real storage stack and the chat graph of ``tests.support.chatgraph`` and
answers
one JSON line per command read from stdin:

- ``{"do": "turn", "thread": T, "text": S}``: a graph turn; answers the messages then shown (the thread's latest)
- ``{"do": "messages", "thread": T}``: the messages shown now
- ``{"do": "sync"}``: a full comparison with Postgres, as soon as it answers (15 s at most)
- ``{"do": "latest", "thread": T}``: the id of the checkpoint shown (the thread's latest)
- ``{"do": "wait_for", "thread": T, "id": C}``: until checkpoint C is the one shown (10 s at most); the messages
- ``{"do": "order", "thread": T}``: checkpoints whose id is not above their parent's, in this device's SQLite
- ``{"do": "leaves", "thread": T}``: the newest checkpoint of each branch
- ``{"do": "clock"}``: this process's wall clock
- ``{"do": "quit"}``
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from storage.backends import PostgresTarget
from storage.manager import StorageManager
from storage.tiered import TieredSaver
from tests.support.chatgraph import build_graph, messages, turn


async def shown(graph: Any, thread: str) -> list[str]:
    return [str(m.content) for m in await messages(graph, thread)]


async def latest(graph: Any, thread: str) -> str | None:
    state = await graph.aget_state({"configurable": {"thread_id": thread}})
    return state.config["configurable"].get("checkpoint_id") if state.config else None


async def bad_order(manager: StorageManager, thread: str) -> list[tuple[str, str]]:
    assert manager.sqlite is not None
    rows = await manager.sqlite._fetch(
        "SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' "
        "AND parent_checkpoint_id IS NOT NULL AND checkpoint_id <= parent_checkpoint_id",
        (thread,),
    )
    return [(r[0], r[1]) for r in rows]


async def main(data_dir: Path, url: str) -> None:
    target = PostgresTarget(url=url, pool_size=2, connect_timeout=2.0) if url else None
    manager = StorageManager(data_dir=data_dir, postgres=target, retry_max_seconds=0.5)
    await manager.start(wait_for_postgres=True)
    graph = build_graph(TieredSaver(manager))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True, "tier": manager.status().active_tier}), flush=True)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            do, thread = command["do"], command.get("thread", "")
            answer: Any
            if do == "turn":
                await turn(graph, thread, command["text"])
                answer = await shown(graph, thread)
            elif do == "messages":
                answer = await shown(graph, thread)
            elif do == "sync":
                manager.retry_now()
                deadline = time.monotonic() + 15
                while True:  # until a sync round finds Postgres there and nothing left to upload
                    report = await manager.sync_now()
                    status = manager.status()
                    done = status.active_tier == "postgres" and status.pending_sync == 0
                    if done or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)  # a poll interval: the condition decides
                answer = {"uploaded": report.uploaded, "downloaded": report.downloaded}
            elif do == "latest":
                answer = await latest(graph, thread)
            elif do == "wait_for":
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if await latest(graph, thread) == command["id"]:
                        break
                    await asyncio.sleep(0.02)  # a poll interval: the condition decides
                answer = await shown(graph, thread)
            elif do == "order":
                answer = await bad_order(manager, thread)
            elif do == "leaves":
                answer = sorted(await manager.leaves(thread))
            elif do == "clock":
                answer = time.time()
            elif do == "quit":
                break
            else:
                raise ValueError(f"unknown command {do!r}")
            print(json.dumps({"answer": answer}), flush=True)
    finally:
        await manager.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""))
