"""Tests of the test infrastructure itself: the PostgreSQL cluster, the fault-injecting proxy, fixtures."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.support.netproxy import TcpProxy
from tests.support.pgcluster import PW_PASSWORD, PW_USER, ExternalPg, NotSupported, PgServer

pytestmark = pytest.mark.postgres


def connect(url: str, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(url, **kwargs)


def scalar(conn: psycopg.Connection, query: str, params=None):
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - t0, result


def require_control(cluster: PgServer) -> None:
    if not cluster.controllable:
        pytest.skip("external server (TEST_POSTGRES_URL): cannot be stopped, started or killed")


@pytest.fixture
def lifecycle(pg_cluster: PgServer):
    """The session cluster, restarted after the test whatever it did to it."""
    require_control(pg_cluster)
    yield pg_cluster
    pg_cluster.ensure_running()


# --- the cluster ----------------------------------------------------------------------------------


def test_env_offscreen():
    assert os.environ.get("QT_QPA_PLATFORM")


def test_cluster_accepts_connections(pg_cluster: PgServer):
    assert pg_cluster.is_running()
    with connect(pg_cluster.url()) as conn:
        assert scalar(conn, "SELECT 1") == 1
        assert scalar(conn, "SELECT inet_server_port()") == pg_cluster.port
    assert urlsplit(pg_cluster.url("x")).port == pg_cluster.port


def test_stop_refuses_then_start_restores(lifecycle: PgServer, pg_url: str):
    cluster = lifecycle
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
    port = cluster.port

    cluster.stop()
    assert not cluster.is_running()
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match=r"(?i)refused"):
        connect(pg_url)
    assert time.monotonic() - t0 < 1.0

    cluster.start()
    assert cluster.is_running()
    assert cluster.port == port
    with connect(pg_url) as conn:
        assert scalar(conn, "SELECT x FROM t") == 7


def test_kill_then_start(lifecycle: PgServer, pg_url: str):
    cluster = lifecycle
    with connect(pg_url) as setup:
        setup.execute("CREATE TABLE t (x int)")
    with connect(pg_url) as conn:
        with conn.transaction():  # committed data must survive the crash
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute("INSERT INTO t VALUES (42)")
        cluster.kill()
        assert not cluster.is_running()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match=r"(?i)refused"):
        connect(pg_url)

    cluster.start()
    assert cluster.is_running()
    with connect(pg_url) as conn:
        assert scalar(conn, "SELECT x FROM t") == 42


def test_kill_twice_and_stop_when_stopped(lifecycle: PgServer):
    cluster = lifecycle
    cluster.kill()
    cluster.kill()  # no-op
    cluster.stop()  # no-op on a dead server
    cluster.start()
    cluster.start()  # no-op
    assert cluster.accepts_connections()


def test_databases_are_distinct(pg_cluster: PgServer, pg_url: str):
    other = pg_cluster.create_database()
    try:
        assert other != pg_url
        with connect(pg_url) as a, connect(other) as b:
            name_a = scalar(a, "SELECT current_database()")
            name_b = scalar(b, "SELECT current_database()")
            assert name_a != name_b
            assert "postgres" not in (name_a, name_b)
            a.execute("CREATE TABLE only_in_a (x int)")
            assert scalar(b, "SELECT to_regclass('only_in_a')") is None
    finally:
        pg_cluster.drop_database(other)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        connect(other)


def test_password_role(pg_cluster: PgServer):
    if not pg_cluster.has_password_role:
        pytest.skip(f"no {PW_USER} role with password authentication on this server")
    with connect(pg_cluster.url(user=PW_USER, password=PW_PASSWORD)) as conn:
        assert scalar(conn, "SELECT current_user") == PW_USER
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg_cluster.url(user=PW_USER, password="wrong-pw"))
    with pytest.raises(psycopg.OperationalError, match=r"(?i)password"):
        connect(pg_cluster.url(user=PW_USER))


def test_database_owned_by_password_role(pg_cluster: PgServer):
    if not pg_cluster.has_password_role:
        pytest.skip(f"no {PW_USER} role on this server")
    url = pg_cluster.create_database(owner=PW_USER)
    try:
        assert urlsplit(url).username == PW_USER
        with connect(url) as conn:
            conn.execute("CREATE TABLE t (x int)")
            assert scalar(conn, "SELECT current_user") == PW_USER
    finally:
        pg_cluster.drop_database(url)


def test_external_wrapper(pg_cluster: PgServer):
    """ExternalPg, tried against the session server."""
    external = ExternalPg(pg_cluster.url())
    assert (external.host, external.port) == (pg_cluster.host, pg_cluster.port)
    url = external.create_database()
    with connect(url) as conn:
        assert scalar(conn, "SELECT 1") == 1
    for op in (external.stop, external.start, external.kill):
        with pytest.raises(NotSupported):
            op()
    external.close()  # drops what it created
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        connect(url)


# --- the proxy ------------------------------------------------------------------------------------


def test_proxy_pass_through(pg_cluster: PgServer, pg_proxy: TcpProxy, pg_url: str):
    url = pg_proxy.url_for(pg_url)
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("127.0.0.1", pg_proxy.port)
    assert parts.path == urlsplit(pg_url).path
    with connect(url) as conn:
        assert scalar(conn, "SELECT 1") == 1
        assert scalar(conn, "SELECT inet_server_port()") == pg_cluster.port
        assert pg_proxy.active_connections() == 1


def test_proxy_url_for_keeps_credentials(pg_proxy: TcpProxy):
    url = pg_proxy.url_for("postgresql://u:p%40ss@db.example:5433/app?sslmode=disable")
    assert url == f"postgresql://u:p%40ss@127.0.0.1:{pg_proxy.port}/app?sslmode=disable"
    dsn = pg_proxy.url_for("host=db.example port=5433 dbname=app user=u")
    assert f"port={pg_proxy.port}" in dsn and "host=127.0.0.1" in dsn and "dbname=app" in dsn


def test_proxy_refuse_then_pass_through(pg_proxy: TcpProxy, pg_url: str):
    url = pg_proxy.url_for(pg_url)
    port = pg_proxy.port
    with connect(url) as conn:
        pg_proxy.refuse()
        with pytest.raises(psycopg.OperationalError):  # existing connections are cut
            conn.execute("SELECT 1")

    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match=r"(?i)refused"):
        connect(url, connect_timeout=10)
    assert time.monotonic() - t0 < 1.0

    pg_proxy.pass_through()
    assert pg_proxy.port == port
    with connect(url) as conn:
        assert scalar(conn, "SELECT 1") == 1


def test_proxy_blackhole_times_out_connect(pg_proxy: TcpProxy, pg_url: str):
    url = pg_proxy.url_for(pg_url)
    pg_proxy.blackhole()
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        connect(url, connect_timeout=1)  # psycopg, like libpq, rounds 1 s up to 2 s
    elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 3.0

    pg_proxy.pass_through()
    with connect(url) as conn:
        assert scalar(conn, "SELECT 1") == 1


def test_proxy_blackhole_stalls_open_connection_until_healed(pg_proxy: TcpProxy, pg_url: str):
    with connect(pg_proxy.url_for(pg_url)) as conn, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pg_proxy.blackhole()
        pending = pool.submit(lambda: scalar(conn, "SELECT 42"))
        with pytest.raises(concurrent.futures.TimeoutError):
            pending.result(timeout=0.5)  # no answer while partitioned
        pg_proxy.pass_through()
        assert pending.result(timeout=10) == 42


def test_proxy_delay(pg_proxy: TcpProxy, pg_url: str):
    with connect(pg_proxy.url_for(pg_url)) as conn:
        scalar(conn, "SELECT 1")
        pg_proxy.delay(100)
        elapsed, value = timed(scalar, conn, "SELECT 1")
        assert value == 1
        assert 0.2 <= elapsed < 2.0

        # Large payloads in both directions arrive whole and in order.
        blob = os.urandom(1_500_000).hex()
        assert scalar(conn, "SELECT md5(%s)", (blob,)) == hashlib.md5(blob.encode()).hexdigest()
        expected = ",".join(str(i) for i in range(1, 200_001))
        assert scalar(
            conn, "SELECT string_agg(i::text, ',' ORDER BY i) FROM generate_series(1, 200000) i"
        ) == (expected)

        pg_proxy.pass_through()
        fastest = min(timed(scalar, conn, "SELECT 1")[0] for _ in range(3))
        assert fastest < 0.1


def test_proxy_cut(pg_proxy: TcpProxy, pg_url: str):
    url = pg_proxy.url_for(pg_url)
    with connect(url) as conn:
        assert scalar(conn, "SELECT 1") == 1
        pg_proxy.cut()
        assert pg_proxy.active_connections() == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.closed
    with connect(url) as conn:  # still accepting, still forwarding
        assert scalar(conn, "SELECT 1") == 1


def test_proxy_while_delayed_cut_keeps_delay(pg_proxy: TcpProxy, pg_url: str):
    url = pg_proxy.url_for(pg_url)
    pg_proxy.delay(50)
    with connect(url) as conn:
        pg_proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert pg_proxy.delay_ms == 50
    with connect(url) as conn:
        elapsed, _ = timed(scalar, conn, "SELECT 1")
        assert elapsed >= 0.1


async def test_proxy_with_async_connection(pg_proxy: TcpProxy, pg_url: str):
    """The proxy runs in its own thread, so the test's own event loop can drive connections through it."""
    url = pg_proxy.url_for(pg_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5) as conn:
        pg_proxy.delay(50)
        t0 = time.monotonic()
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
        assert time.monotonic() - t0 >= 0.1
        pg_proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")


def test_proxy_close_is_idempotent(pg_cluster: PgServer):
    proxy = TcpProxy(pg_cluster.host, pg_cluster.port)
    url = proxy.url_for(pg_cluster.url())
    with connect(url) as conn:
        assert scalar(conn, "SELECT 1") == 1
        proxy.close()
        proxy.close()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match=r"(?i)refused"):
        connect(url)
    with pytest.raises(RuntimeError):
        proxy.refuse()
