"""A new conversation is stored with its first message: a process killed at any point of sending it leaves no listed
conversation without its words.

A real second process (tests/support/first_message.py) opens the storage stack on a data folder and sends the first
message
of a new conversation through the conversation service, against a real model server that holds the reply. It is
stopped inside storage's report of its n-th change (each write, once committed), for every n in turn, and then
killed (SIGKILL; TerminateProcess on Windows); one last run is killed while the reply is held, once nothing more is
written. After each kill the data folder is opened again, as the next start of the app would.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chat.endpoints import Endpoint
from chat.events import ReplyDone
from chat.service import ConversationService, make_title
from storage.factory import Storage
from storage.index import read_index
from storage.manager import StorageManager
from storage.tiered import TieredSaver
from tests.support.model_server import ModelServer
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
TEXT = "Plan a trip to Porto\nwith two stops on the way"
THREAD = "3d5c6a52-first-message"
CHOSEN = "other-model"
POINT_TIMEOUT = 60.0
"""For one child to start (imports take seconds on a busy machine) and reach its point."""


class Child:
    """The second process, its lines as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(json.loads(line))

    def saw(self, check: Callable[[dict[str, Any]], bool]) -> bool:
        return any(check(line) for line in self.lines)

    async def kill(self) -> str:
        """Kill it (it may have ended already); its standard error."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self.reader
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode(errors="replace")


async def start_child(data_dir: Path, server: ModelServer, model: str, freeze_at: int) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.first_message",
        str(data_dir),
        server.base_url,
        THREAD,
        TEXT,
        model,
        str(freeze_at),
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Child(process)


async def kill_at(data_dir: Path, model: str, freeze_at: int) -> str:
    """Send the first message in a second process and kill it at its ``freeze_at``-th storage change; if it makes
    fewer changes before the model call, kill it while the reply is held once the title is stored. Which it was:
    "frozen" or "held"."""
    async with ModelServer() as server:
        server.pause()  # every reply held before its first token
        child = await start_child(data_dir, server, model, freeze_at)
        try:

            def there() -> bool:
                ended = child.process.returncode is not None
                held = server.paused_streams >= 1 and child.saw(lambda line: line.get("index", False))
                return ended or held or child.saw(lambda line: "frozen" in line)

            await eventually(there, POINT_TIMEOUT, f"change {freeze_at} or the reply held")
            frozen = child.saw(lambda line: line.get("frozen") == freeze_at)
            ended = child.process.returncode is not None
        finally:
            errors = await child.kill()
        assert not ended, f"the second process ended by itself: {child.lines}\n{errors[-3000:]}"
        return "frozen" if frozen else "held"


async def open_again(data_dir: Path, server: ModelServer) -> tuple[Storage, ConversationService]:
    manager = StorageManager(data_dir=data_dir)
    await manager.start()
    storage = Storage(manager, TieredSaver(manager))
    endpoint = Endpoint(server.base_url, "test-model", first_token_timeout=30.0, token_timeout=30.0)
    return storage, ConversationService(storage, endpoint)


async def after_the_kill(data_dir: Path, model: str, point: str) -> str:
    """What the next start finds, checked; which state the kill left (for the coverage check)."""
    first_paint = [c.thread_id for c in await read_index(data_dir)]
    async with ModelServer() as server:
        storage, service = await open_again(data_dir, server)
        try:
            words = [(m.role, m.text) for m in (await service.load(THREAD)).messages]
            listed = [(c.thread_id, c.title) for c in await service.conversations()]
            raw = {c.thread_id: c for c in await storage.manager.conversations()}.get(THREAD)
            stored = ("user", TEXT) in words
            assert words in ([], [("user", TEXT)])  # the reply was held: never stored
            if not stored:
                # No conversation without its message: neither in the list nor in the window's first paint.
                assert listed == [], f"a conversation without its message is listed: {listed}"
                assert first_paint == [], "the first paint lists a conversation without its message"
                assert raw is None or not raw.title, "the title was stored before the message"
                return "nothing stored" if raw is None else "a checkpoint without the message"
            assert listed == [(THREAD, make_title(TEXT))]
            assert first_paint == [THREAD]
            if raw is None or not raw.title:
                return "the message, untitled"
            assert raw.title == make_title(TEXT)
            assert raw.model == model  # stored with the title: one write
            if point == "held":
                # The next start answers the message, from the model chosen before the conversation existed.
                done = [e async for e in service.retry(THREAD)]
                assert isinstance(done[-1], ReplyDone), done
                assert [r.model for r in server.chat_requests] == [model or "test-model"]
            return "the message and its title"
        finally:
            await storage.close()


@pytest.mark.parametrize("model", ["", CHOSEN], ids=["default-model", "chosen-model"])
async def test_a_first_message_killed_at_any_point_leaves_no_empty_conversation(tmp_path: Path, model: str) -> None:
    states: list[tuple[int, str, str]] = []
    for n in range(1, 20):
        data_dir = tmp_path / f"kill-{n}"
        point = await kill_at(data_dir, model, n)
        states.append((n, point, await after_the_kill(data_dir, model, point)))
        if point == "held":
            break
    else:
        raise AssertionError(f"the reply was never reached: {states}")
    seen = {state for _n, _point, state in states}
    # The kills fell where it matters: between the first checkpoint and the message, between the message and its
    # title, and with both stored while the reply is awaited.
    assert {"a checkpoint without the message", "the message, untitled", "the message and its title"} <= seen, states
