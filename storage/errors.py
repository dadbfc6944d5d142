"""Split storage failures by cause: the environment (move the tier) or a bug (raise).

Modelled on qutebrowser's KnownError/BugError split: a lost connection, a timeout, a full or read-only disk, a
locked or corrupt file are facts about the machine and the network, and the tiered saver answers them by writing
to the next tier. Anything else is a programming error and must reach the caller.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from dataclasses import dataclass
from typing import Literal

import psycopg
import psycopg_pool

# SQLite's primary result codes (https://sqlite.org/rescode.html; ``sqlite3.Error.sqlite_errorcode``, whose low byte
# is the primary code of an extended one such as SQLITE_IOERR_WRITE) that are conditions of the machine rather than
# of our SQL: a busy or locked file, a disk that fails, is full or read-only, a file that cannot be opened or is not
# (or no longer) a database, no memory. Anything else (a syntax error, a constraint) is a bug.
_SQLITE_ENVIRONMENT_CODES = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)
# A corrupt file is answered by moving the file aside, not only by changing tier.
_SQLITE_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

# The only failures of a local connection that carry no code: Python's sqlite3 on a connection closed under it,
# aiosqlite after its connection was closed or its worker thread stopped. Both come from a file Cairn closed because
# it failed (and replaced), so they are the environment; matched whole, not as parts of other messages.
_CLOSED_CONNECTION_MESSAGES = (
    "cannot operate on a closed database.",
    "no active connection",
    "connection closed",
)


def _sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


# libpq's answer to an option it cannot use ("invalid sslmode value", "invalid integer value ... port"), given before
# any connection is attempted: a wrong setting, not a network that may come back.
_POSTGRES_SETTINGS_MESSAGES = ("connection is bad: invalid",)


def is_environment_error(exc: BaseException) -> bool:
    """True when ``exc`` comes from the machine or the network, not from our code."""
    if isinstance(exc, psycopg.Error) and _refusal_kind(exc.sqlstate) is not None:
        return True  # the server said no to these settings (login, database, permission): someone else must act
    if isinstance(exc, psycopg.errors.UntranslatableCharacter | psycopg.errors.CharacterNotInRepertoire):
        return False  # bad input, not a bad network: the caller must hear about it
    if isinstance(exc, psycopg.OperationalError) and any(m in str(exc) for m in _POSTGRES_SETTINGS_MESSAGES):
        return False  # a URL libpq rejects before touching the network: waiting will not fix it
    if isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
        return True
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction | psycopg.errors.InsufficientResources):
        return True
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
        # Set up once, the tables are gone: another (empty, or restored) database answers at the same URL. The pool
        # reconnects to it without a word; losing the tier makes the next connection run the setup again and the
        # full comparison upload everything.
        return True
    if isinstance(exc, psycopg.InterfaceError) and "closed" in str(exc).lower():
        return True
    if isinstance(exc, sqlite3.Error):
        code = _sqlite_code(exc)
        if code is not None:
            return code in _SQLITE_ENVIRONMENT_CODES
        return isinstance(exc, sqlite3.ProgrammingError) and str(exc).lower() in _CLOSED_CONNECTION_MESSAGES
    if isinstance(exc, ValueError) and str(exc).lower() in _CLOSED_CONNECTION_MESSAGES:
        return True
    return isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError | ConnectionError)


# SQLSTATE classes 28 (invalid authorization: wrong password, no such role, pg_hba.conf refuses) and 3D000 (no such
# database): the server answered, and said no to these credentials.
_LOGIN_REJECTED_SQLSTATES = ("28", "3D000")
_LOGIN_REJECTED_MESSAGES = ("password authentication failed", "no password supplied", "does not exist", "pg_hba.conf")
# Errors on connecting carry no SQLSTATE (libpq gives no result to read it from): these are the server's words, or
# libpq's when the server asked for a password and it had none.
_PASSWORD_MESSAGES = ("password authentication failed", "no password supplied")
# 42501 insufficient_privilege (no CREATE on the schema, no USAGE, a table of another owner) and 3F000
# invalid_schema_name (no schema to create in: an empty or wrong search_path): the role may not do what Cairn's and
# LangGraph's migrations need. A grant or another database fixes it, not a change in our code.
_PERMISSION_SQLSTATES = ("42501", "3F000")

RefusalKind = Literal["password", "login", "permission"]

_HINTS: dict[RefusalKind, str] = {
    "password": "check the user, password and database in Settings",
    "login": "check the user, password and database in Settings",
    "permission": "the user may not create tables in this database: ask for CREATE permission, or use another database",
}


@dataclass(frozen=True)
class Refusal:
    """The server answered and refused these settings: ``kind`` for the program, ``hint`` for the user."""

    kind: RefusalKind
    hint: str


def _refusal_kind(sqlstate: str | None) -> RefusalKind | None:
    if not sqlstate:
        return None
    if sqlstate == "28P01":
        return "password"
    if sqlstate.startswith(_LOGIN_REJECTED_SQLSTATES):
        return "login"
    if sqlstate in _PERMISSION_SQLSTATES:
        return "permission"
    return None


def refusal(exc: BaseException) -> Refusal | None:
    """What the Postgres server refused, when it answered no to the login or to what setup needs; else None.

    Retrying within seconds with the same settings cannot help (a wrong password sent every few seconds fills the
    server's log or locks the account): the caller retries slowly, and at once when asked."""
    if not isinstance(exc, psycopg.Error):
        return None
    kind = _refusal_kind(exc.sqlstate)
    if kind is None and not exc.sqlstate and isinstance(exc, psycopg.OperationalError):
        text = str(exc).lower()
        if any(m in text for m in _PASSWORD_MESSAGES):
            kind = "password"
        elif any(m in text for m in _LOGIN_REJECTED_MESSAGES):
            kind = "login"
    return Refusal(kind, _HINTS[kind]) if kind is not None else None


def is_login_rejected(exc: BaseException) -> bool:
    """True when the Postgres server refused the login: retrying soon with the same settings cannot help."""
    found = refusal(exc)
    return found is not None and found.kind in ("password", "login")


def is_corruption(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and _sqlite_code(exc) in _SQLITE_CORRUPTION_CODES


def describe(exc: BaseException) -> str:
    """A one-line reason for the badge, the doctor and the log: the error class and its first line."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


# --- the cause in words, for people -------------------------------------------------------------------------------
# The badge, its tooltip and the storage details' headline say why in these words; ``describe`` (the exception's
# class and text) goes to the details' technical part and the log. Connecting gives no SQLSTATE (libpq has no result
# to read it from): there libpq's own message is all there is, and these are its words (and psycopg's, for a name
# that does not resolve). Everything else is told by type and SQLSTATE.
CANT_REACH = "Can't reach the server"
_CONNECT_MESSAGES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("failed to resolve host", "could not translate host name"), f"{CANT_REACH}: its name was not found (DNS)"),
    (("connection refused", os.strerror(errno.ECONNREFUSED).lower()), f"{CANT_REACH}: connection refused"),
    (("timeout expired", "timed out"), f"{CANT_REACH}: it does not answer"),
    (("network is unreachable", "no route to host"), f"{CANT_REACH}: no network route to it"),
    (("ssl", "tls", "certificate"), "The secure (TLS) connection to the server failed"),
    (("password authentication failed",), "The server refused the password"),
    (("no password supplied",), "The server asks for a password and none is known"),
    (("the database system is",), "The server is starting up or shutting down"),
    (('database "',), "The database does not exist on the server"),  # 'FATAL: database "x" does not exist'
    (('role "',), "The server does not know this user"),  # 'FATAL: role "x" does not exist'
    (("pg_hba.conf",), "The server does not accept this user from this computer"),
    (
        ("server closed the connection", "connection reset", "broken pipe", "terminating connection"),
        "The server closed the connection",
    ),
)
_SQLSTATE_WORDS = {
    "28P01": "The server refused the password",
    "3D000": "The database does not exist on the server",
    "42501": "The user may not create tables in this database",
    "3F000": "The user may not create tables in this database",
    "57P01": "The server is shutting down",
    "57P02": "The server is shutting down",
    "57P03": "The server is starting up or shutting down",
    "53300": "The server has too many connections",
    "25006": "The server is read-only (a standby?)",
}
_SQLITE_WORDS = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_READONLY: "the file is read-only",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened",
    sqlite3.SQLITE_IOERR: "the disk cannot be read or written",
    sqlite3.SQLITE_CORRUPT: "the file is damaged",
    sqlite3.SQLITE_NOTADB: "the file is not a Cairn database",
    sqlite3.SQLITE_BUSY: "another program is using the file",
    sqlite3.SQLITE_LOCKED: "another program is using the file",
    sqlite3.SQLITE_NOMEM: "the computer is out of memory",
}
_ERRNO_WORDS = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the disk is read-only",
    errno.EACCES: "Cairn may not write there",
    errno.EPERM: "Cairn may not write there",
    errno.ENOENT: "the folder or file is gone",
    errno.EEXIST: "a file is where the data folder should be",
    errno.ENOTDIR: "a file is where the data folder should be",
}


def plain_words(exc: BaseException) -> str:
    """Why ``exc`` happened, in words for people ("Can't reach the server: connection refused"), no class names."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.errors.ConnectionTimeout):  # PoolTimeout is an Error too
        return f"{CANT_REACH}: it does not answer"
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate or ""
        if sqlstate in _SQLSTATE_WORDS:
            return _SQLSTATE_WORDS[sqlstate]
        if sqlstate.startswith("28"):
            return "The server refused the login"
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
            return "Cairn's tables are gone from the server (another database answers at this address?)"
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            text = str(exc).lower()
            for needles, words in _CONNECT_MESSAGES:
                if any(needle in text for needle in needles):
                    return words
            return CANT_REACH
        return "The server answered with an error"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"{CANT_REACH}: it does not answer"
    if isinstance(exc, psycopg_pool.TooManyRequests):
        return "The server is too busy"
    if isinstance(exc, sqlite3.Error):
        code = _sqlite_code(exc)
        return (_SQLITE_WORDS.get(code) if code is not None else None) or "the file cannot be used"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[exc.errno]
    if isinstance(exc, ConnectionError):
        return CANT_REACH
    if isinstance(exc, OSError):
        return "the disk cannot be read or written"
    return "something went wrong (see the technical details)"
