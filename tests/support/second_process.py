"""A second Cairn process on a data folder: ``python -m tests.support.second_process DATA_DIR THREAD TITLE TEXT`` opens
the storage stack there (no Postgres), stores one turn with a title, and exits."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from storage.manager import StorageManager
from storage.tiered import TieredSaver
from tests.support.chatgraph import build_graph, turn


async def main(data_dir: Path, thread_id: str, title: str, text: str) -> None:
    manager = StorageManager(data_dir=data_dir)
    await manager.start()
    try:
        await turn(build_graph(TieredSaver(manager)), thread_id, text)
        await manager.update_conversation(thread_id, title=title)
    finally:
        await manager.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), *sys.argv[2:5]))
