"""Another device, as its own process under libfaketime (tests/support/device.py is that process): ``device()`` starts
one and drives it line by line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def faketime() -> str:
    path = shutil.which("faketime")
    if path is None:
        message = "libfaketime's faketime is not installed (Debian package faketime; scripts/test.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


class Device:
    """The other machine: a process answering one JSON line per command (see tests/support/device.py)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, do: str, **args: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps({"do": do, **args}) + "\n").encode())
        await self.process.stdin.drain()
        async with asyncio.timeout(60):
            line = await self.process.stdout.readline()
        if not line:
            raise AssertionError(f"device process ended (exit {await self.process.wait()})")
        return json.loads(line)["answer"]


@contextlib.asynccontextmanager
async def device(data_dir: Path, url: str, offset: str) -> AsyncIterator[Device]:
    # FAKETIME_DONT_FAKE_MONOTONIC: asyncio's timers keep real time; only the wall clock (and so uuid6) is off.
    env = {**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        faketime(), "-f", offset, sys.executable, "-m", "tests.support.device", str(data_dir), url,
        cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(60):
        ready = json.loads(await process.stdout.readline())
    assert ready == {"ready": True, "tier": "postgres"}, ready
    other = Device(process)
    try:
        yield other
    finally:
        with contextlib.suppress(AssertionError, BrokenPipeError, ConnectionResetError):
            await other.ask("quit")
        async with asyncio.timeout(30):
            await process.wait()
