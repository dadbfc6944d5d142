"""The conversation list read straight from the SQLite file, for the window's first paint.

The storage stack needs LangGraph's savers and psycopg, about a second of imports on a slow machine; the list needs
one table. So the window shows this first, and the list from the open stack replaces it a moment later.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from storage import schema
from storage.conversations import Conversation, listed, row_to_conversation

FIRST_PAINT_QUERY = f"""SELECT {schema.INDEX_COLUMNS} FROM cairn_conversations c
    WHERE c.title != ''
       OR EXISTS (SELECT 1 FROM writes w WHERE w.thread_id = c.thread_id AND w.channel = 'messages')
       OR NOT EXISTS (SELECT 1 FROM checkpoints k WHERE k.thread_id = c.thread_id)"""
"""The rows the list shows, as the conversation service lists them: not an untitled conversation whose checkpoints
hold no message (a run killed between its first checkpoint and its message's write; chat/service.py)."""


async def read_index(data_dir: Path | None) -> list[Conversation]:
    """The conversations the local file lists; none when there is no file yet or it cannot be read now (the storage
    stack, opening next, says why)."""
    if data_dir is None:
        return []
    return await asyncio.to_thread(_read, data_dir / schema.SQLITE_FILE_NAME)


def _read(path: Path) -> list[Conversation]:
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            rows = conn.execute(FIRST_PAINT_QUERY).fetchall()
        finally:
            conn.close()
        return listed(row_to_conversation(row) for row in rows)
    except (sqlite3.Error, ValueError):  # no index table yet, a damaged or locked file, a row that cannot be shown
        return []
