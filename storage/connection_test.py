"""The settings dialog's "Test connection": one real connect and ``SELECT version()``, the outcome in words.

Qt-free, so it runs the same in a test, the doctor or the GUI. It never blocks the loop: psycopg's async connect
resolves the host off the loop and polls the socket, and ``asyncio.timeout`` bounds the whole attempt.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from storage.errors import describe
from storage.postgres_url import PostgresAddress, parse_postgres_url
from storage.secrets import mask_secrets, split_password

ResultKind = Literal[
    "ok",
    "invalid_url",
    "dns",
    "refused",
    "timeout",
    "auth",
    "no_password",
    "unknown_user",
    "unknown_database",
    "ssl",
    "other",
]

"""libpq's sslmode values, weakest first; "prefer" is its default."""

# libpq's own words; the server's address inside them is the one it really tried.
_SERVER_AT = re.compile(r'server at "([^"]*)", port (\d+)')
_SOCKET_AT = re.compile(r'server on socket "([^"]*)"')
_FOR_USER = re.compile(r'for user "([^"]*)"')
_ROLE = re.compile(r'role "([^"]*)" does not exist')
_DATABASE = re.compile(r'database "([^"]*)" does not exist')


@dataclass(frozen=True)
class ConnectionResult:
    ok: bool
    message: str
    kind: ResultKind
    server_version: str = ""


def classify(exc: BaseException, url: str, timeout: float) -> ConnectionResult:
    """The failure of a connect to ``url`` as a sentence the user can act on, and its kind."""
    try:
        target = parse_postgres_url(url)
    except ValueError:
        target = PostgresAddress("localhost", "5432", "", "")
    text = str(exc)
    lower = text.lower()
    address = target.address
    if found := _SERVER_AT.search(text):
        address = f"{found.group(1)}:{found.group(2)}"
    elif found := _SOCKET_AT.search(text):
        address = found.group(1)

    if isinstance(exc, TimeoutError | psycopg.errors.ConnectionTimeout) or "timeout expired" in lower:
        return ConnectionResult(False, f"No answer from {address} within {timeout:g} s", "timeout")
    if isinstance(exc, psycopg.ProgrammingError) or "invalid sslmode" in lower or "invalid connection option" in lower:
        return ConnectionResult(False, f"Not a valid PostgreSQL URL: {_first_line(text)}", "invalid_url")
    if "failed to resolve host" in lower or "could not translate host name" in lower:
        return ConnectionResult(
            False, f"Cannot find the host {target.host}: the name does not resolve (DNS lookup failed)", "dns"
        )
    if "connection refused" in lower:
        return ConnectionResult(False, f"Connection refused: nothing is listening on {address}", "refused")
    if "password authentication failed" in lower:
        user = _group(_FOR_USER, text) or target.user
        return ConnectionResult(False, f"Password authentication failed for user {user}", "auth")
    if "no password supplied" in lower:
        return ConnectionResult(
            False, f"The server at {address} asks for a password for user {target.user}, and none is set", "no_password"
        )
    if found := _ROLE.search(text):
        return ConnectionResult(False, f'The user "{found.group(1)}" does not exist on {address}', "unknown_user")
    if found := _DATABASE.search(text):
        return ConnectionResult(
            False, f'The database "{found.group(1)}" does not exist on {address}', "unknown_database"
        )
    if "ssl" in lower:
        return ConnectionResult(False, f"SSL problem with {address}: {_detail(text)}", "ssl")
    return ConnectionResult(False, f"Cannot connect to {address}: {mask_secrets(describe(exc))}", "other")


async def test_connection(url: str, password: str | None, timeout: float) -> ConnectionResult:
    """Connect to ``url`` (``password`` wins over one inside it), ask the server's version, close.

    The whole attempt, connect and query, is bounded by ``timeout`` seconds. Never raises for a connection
    problem: every outcome is a ``ConnectionResult``.
    """
    clean, inline_password = split_password(url) if "://" in url else (url, None)
    try:
        parse_postgres_url(clean)
    except ValueError as exc:
        return ConnectionResult(False, f"Not a valid PostgreSQL URL: {exc}", "invalid_url")
    # libpq counts whole seconds and treats anything below 2 as 2; asyncio.timeout is the exact bound.
    libpq: dict[str, Any] = {"connect_timeout": max(2, math.ceil(timeout))}  # libpq options, by keyword
    if password or inline_password:
        libpq["password"] = password or inline_password or ""
    try:
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(clean, autocommit=True, **libpq)
            try:
                cursor = await conn.execute("SELECT version()")
                row = await cursor.fetchone()
            finally:
                await conn.close()
    except (psycopg.Error, OSError, TimeoutError) as exc:
        return classify(exc, clean, timeout)
    version = str(row[0]) if row else ""
    short = version.split(" on ", 1)[0] or "PostgreSQL"
    return ConnectionResult(True, f"Connected to {parse_postgres_url(clean).address}: {short}", "ok", version)


test_connection.__test__ = False  # type: ignore[attr-defined]  # its name is not a pytest test


def _group(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    return found.group(1) if found else ""


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else "libpq cannot parse it"


def _detail(text: str) -> str:
    """libpq's message without its "connection failed: connection to server at ... failed:" preamble."""
    line = _first_line(text)
    return mask_secrets(line.rsplit("failed: ", 1)[-1].strip())
