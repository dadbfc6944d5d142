"""The live half of the sync: one dedicated LISTEN connection to Postgres.

Postgres's triggers (``storage/schema.py``, Postgres migration 2) NOTIFY ``CHANGES_CHANNEL`` with the thread and the
writing device at every commit that changes a thread. ``listen`` keeps one autocommit connection of its own (LISTEN
is session state: a pooled connection would lose it), hands every other device's thread id to ``on_thread``, and
checks now and then that the connection still answers, so a connection that died in silence (a partition) is
noticed within ``check_every`` plus the connect timeout instead of TCP's quarter of an hour.

Notifications sent while nobody listens are lost: after every (re)connect the caller reads the change log past the
last position it saw (``on_listening``). Through a pooler in transaction mode (PgBouncer, hosted poolers on port
6543) notifications never arrive; ``listen`` finds that out by notifying itself once, and raises
``NotificationsUnavailable`` so the caller polls instead and says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import psycopg

from storage.backends import PostgresTarget
from storage.schema import APP_NAME_PREFIX, CHANGES_CHANNEL

log = logging.getLogger("cairn.sync")

SELF_CHECK_SECONDS = 3.0
LISTENER_SUFFIX = ":listen"


class NotificationsUnavailable(Exception):
    """LISTEN was accepted, but a notification sent to ourselves never came back."""


def parse(payload: str) -> tuple[str, str] | None:
    """(thread id, writing device) of a notification, or None for one that is not a thread's change."""
    try:
        data: Any = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("t"), str) or not data["t"]:
        return None
    device = data.get("d")
    return data["t"], device if isinstance(device, str) else ""


async def listen(
    target: PostgresTarget,
    on_thread: Callable[[str], None],
    on_listening: Callable[[], None],
    *,
    check_every: float,
) -> None:
    """Listen until the connection fails (the error is raised) or the task is cancelled."""
    me = APP_NAME_PREFIX + target.device
    # Named apart from the pool's connections, so an administrator (or a test) can tell which one listens.
    kwargs = {**target.connect_kwargs(), "application_name": me + LISTENER_SUFFIX}
    async with asyncio.timeout(target.connect_timeout):
        conn = await psycopg.AsyncConnection.connect(target.url, **kwargs)
    try:
        await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
        token = secrets.token_hex(8)
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, json.dumps({"probe": token})))
        heard = False
        async for note in conn.notifies(timeout=SELF_CHECK_SECONDS):
            if note.payload == json.dumps({"probe": token}):
                heard = True
                break
            _deliver(note.payload, me, on_thread)
        if not heard:
            raise NotificationsUnavailable(
                "the server accepts LISTEN but delivers no notifications (a connection pooler in transaction mode?)"
            )
        log.info("listening for changes from other devices")
        on_listening()
        while True:
            async for note in conn.notifies(timeout=check_every):
                _deliver(note.payload, me, on_thread)
            async with asyncio.timeout(target.connect_timeout):
                await conn.execute("SELECT 1")
    finally:
        await conn.close()  # libpq's terminate message waits for nothing: fine on a dead network


def _deliver(payload: str, me: str, on_thread: Callable[[str], None]) -> None:
    parsed = parse(payload)
    if parsed is None:
        return
    thread_id, device = parsed
    if device != me:
        on_thread(thread_id)
