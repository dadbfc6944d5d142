"""storage/errors.py: environment or bug, decided by the codes the drivers give (SQLite's result code, Postgres'
SQLSTATE and psycopg's classes), on errors made by a real SQLite file and a real Postgres server."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from storage.errors import describe, is_corruption, is_environment_error, is_login_rejected, refusal
from tests.support.pgcluster import PgServer


def _raised(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except BaseException as exc:
        return exc
    raise AssertionError("no error")


def _database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY)")
    return conn


def test_sqlite_conditions_of_the_machine_are_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = _database(path)
    holder.execute("BEGIN EXCLUSIVE")
    locked = _raised(lambda: _database(path).execute("INSERT INTO t VALUES (1)"))
    holder.execute("ROLLBACK")

    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    readonly = _raised(lambda: read_only.execute("INSERT INTO t VALUES (1)"))
    cannot_open = _raised(lambda: sqlite3.connect(tmp_path / "missing" / "db.sqlite"))
    closed_conn = sqlite3.connect(path)
    closed_conn.close()
    closed = _raised(lambda: closed_conn.execute("SELECT 1"))

    for exc in (locked, readonly, cannot_open, closed):
        assert isinstance(exc, sqlite3.Error), exc
        assert is_environment_error(exc), describe(exc)
        assert not is_corruption(exc), describe(exc)


def test_a_file_that_is_not_a_database_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"not a database, whatever its name says " * 200)
    exc = _raised(lambda: _database(path))
    assert is_environment_error(exc) and is_corruption(exc), describe(exc)


def test_mistakes_in_our_sql_are_bugs_whatever_their_words(tmp_path: Path) -> None:
    conn = _database(tmp_path / "db.sqlite")
    conn.execute("INSERT INTO t VALUES (1)")
    for exc in (
        _raised(lambda: conn.execute("SELEC 1")),
        _raised(lambda: conn.execute("INSERT INTO t VALUES (1)")),  # a constraint
        _raised(lambda: conn.execute("SELECT * FROM no_such_table")),
        _raised(lambda: conn.execute("SELECT no_such_function()")),
    ):
        assert not is_environment_error(exc), describe(exc)
    # A trigger's own words that read like a disk fault are still our SQL's error: the code decides, not the words.
    conn.execute("CREATE TRIGGER t_guard BEFORE INSERT ON t BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
    worded = _raised(lambda: conn.execute("INSERT INTO t VALUES (2)"))
    assert "disk I/O error" in str(worded)
    assert not is_environment_error(worded), describe(worded)


def test_describe_names_the_class_and_the_first_line() -> None:
    assert describe(ValueError("first\nsecond")) == "ValueError: first"
    assert describe(TimeoutError()) == "TimeoutError"


async def test_postgres_refusals_and_faults_by_sqlstate(pg_cluster: PgServer, pg_url: str) -> None:
    async def error_of(url: str, sql: str = "SELECT 1", **kwargs: object) -> BaseException:
        try:
            async with await psycopg.AsyncConnection.connect(url, connect_timeout=5, **kwargs) as conn:  # type: ignore[arg-type]
                await conn.execute(sql)
        except BaseException as exc:
            return exc
        raise AssertionError(f"no error from {sql}")

    missing_table = await error_of(pg_url, "SELECT * FROM cairn_missing")
    assert is_environment_error(missing_table)  # another (empty) database answers where ours was
    syntax = await error_of(pg_url, "SELEC 1")
    assert not is_environment_error(syntax) and refusal(syntax) is None

    no_database = await error_of(pg_url.rsplit("/", 1)[0] + "/cairn_no_such_database")
    assert is_login_rejected(no_database) and is_environment_error(no_database), describe(no_database)

    refused_port = await error_of(f"postgresql://127.0.0.1:{_free_port()}/x")
    assert is_environment_error(refused_port) and refusal(refused_port) is None, describe(refused_port)

    bad_setting = await error_of(pg_url + ("&" if "?" in pg_url else "?") + "sslmode=sometimes")
    assert not is_environment_error(bad_setting), describe(bad_setting)  # waiting will not fix a wrong setting


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("error", [OSError("x"), TimeoutError(), ConnectionResetError()])
def test_the_network_and_the_os_are_the_environment(error: BaseException) -> None:
    assert is_environment_error(error)


@pytest.mark.parametrize("error", [KeyError("k"), TypeError("t"), ValueError("disk I/O error"), RuntimeError()])
def test_everything_else_is_a_bug(error: BaseException) -> None:
    assert not is_environment_error(error)
