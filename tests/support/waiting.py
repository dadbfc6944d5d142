"""Waiting on conditions with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from storage.manager import StorageManager
from storage.status import StorageStatus


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float, message: str = "") -> float:
    """Poll ``check`` on the loop until true; returns the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s: {message}")
        await asyncio.sleep(0.02)  # a poll interval, not a synchronisation: the condition decides


async def wait_for_status(
    manager: StorageManager, predicate: Callable[[StorageStatus], bool], timeout: float
) -> StorageStatus:
    """Wait for a status pushed by the manager (its listener events) that satisfies ``predicate``."""
    if predicate(manager.status()):
        return manager.status()
    loop = asyncio.get_running_loop()
    future: asyncio.Future[StorageStatus] = loop.create_future()

    def listener(status: StorageStatus, _event: object) -> None:
        if predicate(status) and not future.done():
            future.set_result(status)

    unsubscribe = manager.subscribe(listener)
    try:
        async with asyncio.timeout(timeout):
            return await future
    finally:
        unsubscribe()
