"""Shared fixtures. Logic lives in tests/support/pgcluster.py and tests/support/netproxy.py."""

from __future__ import annotations

import os
import uuid

# Before anything can import Qt (collection imports test modules).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.support.netproxy import TcpProxy
from tests.support.pgcluster import PgServer, PostgresUnavailable, open_test_server


@pytest.fixture(autouse=True, scope="session")
def _qt_offscreen() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that needs the server is marked, so `-m "not postgres"` deselects it.
    for item in items:
        if "pg_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def _own_id_clock() -> Iterator[None]:
    """Checkpoint ids never sort below one this process has seen (storage/clock.py), and that floor is process-wide:
    a test whose other device runs an hour ahead leaves it an hour ahead, as a real device would keep it. Tests after
    it expect ids near the wall clock: give the floor back."""
    from langgraph.checkpoint.base import id as lg_id

    saved = lg_id._last_v6_timestamp
    yield
    lg_id._last_v6_timestamp = saved


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's PostgreSQL: `ExternalPg` from TEST_POSTGRES_URL, else a private `PgCluster`.

    Without PostgreSQL the dependent tests are skipped, or fail when CI=true, unless CAIRN_ALLOW_NO_POSTGRES=1 says
    that this CI runner may lack it (set only by .github/workflows/tests.yml, on Windows and macOS runners).
    """
    try:
        server: PgServer = open_test_server()
    except PostgresUnavailable as exc:
        message = f"PostgreSQL is not available: {exc}"
        allowed = os.environ.get("CAIRN_ALLOW_NO_POSTGRES") == "1"
        if os.environ.get("CI", "").lower() == "true" and not allowed:
            pytest.fail(message, pytrace=False)
        pytest.skip(message + (" (CAIRN_ALLOW_NO_POSTGRES=1)" if allowed else ""))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_cluster: PgServer):
    """URL of a fresh, empty database (user postgres), dropped after the test."""
    pg_cluster.ensure_running()  # in case an earlier test stopped or crashed the server
    url = pg_cluster.create_database()
    yield url
    pg_cluster.ensure_running()
    pg_cluster.drop_database(url)


@pytest.fixture
def limited_url(pg_cluster: PgServer, pg_url: str):
    """``pg_url``'s database for a new role that may log in but not create tables (no CREATE on schema public, as
    a database administrator often sets it up); the role and the database are dropped after the test.

    ``GRANT CREATE ON SCHEMA public TO <role>`` (the URL's user) lets it create them."""
    role = f"cairn_limited_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        # PostgreSQL 15 grants PUBLIC no CREATE on public any more; older servers do, so say it for all of them.
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    yield pg_cluster.url(conninfo_to_dict(pg_url)["dbname"], user=role)
    pg_cluster.ensure_running()
    pg_cluster.drop_database(pg_url)  # first: the role owns the tables it created there
    with psycopg.connect(pg_cluster.url(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def pg_proxy(pg_cluster: PgServer):
    """A `TcpProxy` in front of the cluster; use ``pg_proxy.url_for(pg_url)``."""
    proxy = TcpProxy(pg_cluster.host, pg_cluster.port)
    yield proxy
    proxy.close()


# --- storage fixtures below ---

from collections.abc import AsyncIterator, Awaitable, Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from storage.backends import PostgresTarget  # noqa: E402
from storage.factory import Storage  # noqa: E402
from storage.manager import REJECTED_RETRY_SECONDS, StorageManager  # noqa: E402
from storage.tiered import TieredSaver  # noqa: E402
from tests.support.keyring_backend import memory_keyring, no_keyring  # noqa: E402, F401

OpenStorage = Callable[..., Awaitable[Storage]]


@pytest.fixture
async def open_storage() -> AsyncIterator[OpenStorage]:
    """Open a storage stack on a data dir and (optionally) a Postgres URL; closed after the test.

    ``wait=True`` waits for the first Postgres attempt, so a test starts from a known tier.
    """
    opened: list[Storage] = []

    async def make(
        data_dir: Path | None,
        pg_url: str | None = None,
        *,
        prefer_async: bool = True,
        connect_timeout: float = 2.0,
        retry_max_seconds: float = 0.5,
        wait: bool = True,
        password: str | None = None,
        refused_retry_seconds: float = REJECTED_RETRY_SECONDS,
    ) -> Storage:
        target = (
            PostgresTarget(
                url=pg_url,
                password=password,
                pool_size=4,
                connect_timeout=connect_timeout,
                prefer_async=prefer_async,
            )
            if pg_url
            else None
        )
        manager = StorageManager(
            data_dir=data_dir,
            postgres=target,
            retry_max_seconds=retry_max_seconds,
            refused_retry_seconds=refused_retry_seconds,
        )
        await manager.start(wait_for_postgres=wait)
        storage = Storage(manager, TieredSaver(manager))
        opened.append(storage)
        return storage

    yield make
    for storage in reversed(opened):
        await storage.close()
