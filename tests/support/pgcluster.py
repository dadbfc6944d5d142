"""Throwaway PostgreSQL servers for tests.

`PgCluster` initdb's and runs a private cluster on a free loopback port (as the unprivileged
``postgres`` OS user when the test process is root). `ExternalPg` wraps an existing server given by
``TEST_POSTGRES_URL``. Both offer the same interface (`url`, `host`, `port`, `create_database`,
`drop_database`, `close`); only `PgCluster` can be stopped, started and crashed.

This module does not import pytest.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "ENV_URL",
    "PW_PASSWORD",
    "PW_USER",
    "ExternalPg",
    "NotSupported",
    "PgCluster",
    "PgServer",
    "PostgresError",
    "PostgresUnavailable",
    "find_pg_bindir",
    "open_test_server",
]

ENV_URL = "TEST_POSTGRES_URL"
#: A role that must authenticate with a password (scram-sha-256), for wrong-password tests.
PW_USER = "cairn_pw"
PW_PASSWORD = "secret-pw"

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_OS_USER = "postgres"
_DB_PREFIX = "cairn_test_"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (or no way to run them) on this machine."""


class PostgresError(RuntimeError):
    """A PostgreSQL command failed or the server did not become ready in time."""


class NotSupported(RuntimeError):
    """The operation is impossible on this kind of server (e.g. stopping an external one).

    Tests should turn it into a skip: ``except NotSupported as e: pytest.skip(str(e))``.
    """


# --------------------------------------------------------------------------------------------------
# Locating binaries


def _has_server_binaries(bindir: str | os.PathLike[str]) -> bool:
    return all(shutil.which(name, path=str(bindir)) for name in _SERVER_BINARIES)


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(p) for p in re.findall(r"\d+", version)) or (0,)


def find_pg_bindir() -> Path:
    """Directory holding initdb, pg_ctl and postgres.

    Search order: ``pg_config --bindir``; the newest ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu); ``PATH``.
    Raises `PostgresUnavailable` when none has all three.
    """
    tried: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            tried.append(out)
            if _has_server_binaries(out):
                return Path(out)
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        tried.append(bindir)
        if _has_server_binaries(bindir):
            return Path(bindir)
    found = [shutil.which(name) for name in _SERVER_BINARIES]
    if all(found):
        return Path(found[0]).parent  # type: ignore[arg-type]
    tried.append("PATH")
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; looked in: "
        + ", ".join(tried)
        + ". Install them (Debian: `apt-get install postgresql`, or run scripts/test.sh) "
        f"or point {ENV_URL} at a server."
    )


# --------------------------------------------------------------------------------------------------
# Helpers


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass. Returns its last value."""
    deadline = time.monotonic() + timeout
    wake = threading.Event()  # never set: used as an interruptible pause between polls
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        wake.wait(min(interval, remaining))


def _pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a killed postmaster may stay unreaped by PID 1)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _child_pids(pid: int) -> list[int]:
    children = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(Path(stat).parent.name))
    return children


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _build_url(host: str, port: int, dbname: str, user: str, password: str | None) -> str:
    auth = quote(user, safe="")
    if password is not None:
        auth += ":" + quote(password, safe="")
    return f"postgresql://{auth}@{host}:{port}/{quote(dbname, safe='')}"


def _dbname_of(name_or_url: str) -> str:
    if "://" in name_or_url:
        return unquote(urlsplit(name_or_url).path.lstrip("/"))
    if "=" in name_or_url:
        return conninfo_to_dict(name_or_url)["dbname"]
    return name_or_url


# --------------------------------------------------------------------------------------------------
# Common interface


class PgServer:
    """What tests may rely on, whether the server is private (`PgCluster`) or external (`ExternalPg`)."""

    #: True if stop()/start()/kill() work.
    controllable: bool = False
    #: True if the `PW_USER` role exists and must authenticate with `PW_PASSWORD`.
    has_password_role: bool = False

    host: str
    port: int

    def __init__(self) -> None:
        self._created: set[str] = set()
        self._created_lock = threading.Lock()

    # -- URLs --------------------------------------------------------------------------------------
    def url(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        return _build_url(self.host, self.port, dbname, user, password)

    def _admin_url(self, dbname: str | None = None) -> str:
        return self.url(dbname or "postgres")

    # -- databases ---------------------------------------------------------------------------------
    def create_database(self, *, owner: str | None = None) -> str:
        """Create a database with a unique name and return a URL for it.

        The URL logs in as the admin user, or as `owner` when given (with `PW_PASSWORD` for `PW_USER`).
        """
        name = f"{_DB_PREFIX}{uuid.uuid4().hex[:16]}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(query)
        with self._created_lock:
            self._created.add(name)
        if owner is None:
            return self._admin_url(name)
        return self.url(name, user=owner, password=PW_PASSWORD if owner == PW_USER else None)

    def drop_database(self, name: str) -> None:
        """Drop a database (by name or by URL), disconnecting its sessions. Missing databases are ignored."""
        dbname = _dbname_of(name)
        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        with self._created_lock:
            self._created.discard(dbname)

    # -- lifecycle ---------------------------------------------------------------------------------
    def accepts_connections(self, timeout: float = 2.0) -> bool:
        try:
            with psycopg.connect(self._admin_url(), connect_timeout=max(2, int(timeout))) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def ensure_running(self) -> None:
        """Start the server if a previous test left it stopped (no-op for external servers)."""

    def stop(self) -> None:
        raise NotSupported(f"{type(self).__name__} cannot be stopped")

    def start(self) -> None:
        raise NotSupported(f"{type(self).__name__} cannot be started")

    def kill(self) -> None:
        raise NotSupported(f"{type(self).__name__} cannot be killed")

    def is_running(self) -> bool:
        return self.accepts_connections()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Private cluster


class PgCluster(PgServer):
    """A private PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:<free port>.

    Role ``postgres`` is trusted on loopback (as is any other role except `PW_USER`); role `PW_USER` needs
    `PW_PASSWORD` (scram-sha-256). Durability is off (fsync, synchronous_commit, full_page_writes).
    """

    controllable = True
    has_password_role = True

    def __init__(self, *, start_timeout: float = 60.0, bindir: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.bindir = Path(bindir) if bindir else find_pg_bindir()
        self.host = "127.0.0.1"
        self.port = 0
        self.start_timeout = start_timeout
        self._as_root = _is_root()
        self._runuser: list[str] = []
        if self._as_root:
            self._runuser = self._prepare_os_user()
        self.base = Path(tempfile.mkdtemp(prefix="cairn-pg-"))
        self.datadir = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self._closed = False
        try:
            os.chmod(self.base, 0o755)
            if self._as_root:
                import pwd

                pw = pwd.getpwnam(_OS_USER)
                os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._initdb()
            self._start_first_time()
            self._create_password_role()
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------------
    @staticmethod
    def _prepare_os_user() -> list[str]:
        runuser = shutil.which("runuser")
        if not runuser:
            raise PostgresUnavailable(
                "running as root but `runuser` is missing: cannot run PostgreSQL unprivileged"
            )
        import pwd

        try:
            pwd.getpwnam(_OS_USER)
        except KeyError:
            try:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", _OS_USER],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
            except (OSError, subprocess.CalledProcessError) as exc:
                raise PostgresUnavailable(f"cannot create the `{_OS_USER}` OS user: {exc}") from exc
        return [runuser, "-u", _OS_USER, "--"]

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        cmd = [*self._runuser, str(self.bindir / args[0]), *args[1:]]
        # PG* variables (PGPORT, PGDATA, ...) would change what the tools do.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.base,  # the postgres user may not be able to enter our working directory
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{args[0]} timed out after {timeout}s{self._log_tail()}") from exc
        if proc.returncode != 0:
            raise PostgresError(
                f"{' '.join(args[:2])} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}{self._log_tail()}"
            )
        return proc

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- postgres.log (tail) ---\n" + "\n".join(text)

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D", str(self.datadir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "'{}'".format(str(self.datadir).replace("'", "''")),
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "password_encryption": "'scram-sha-256'",
        }
        # Writing in place keeps the files' owner (the postgres user) even when we are root.
        with open(self.datadir / "postgresql.conf", "a") as fh:
            fh.write("\n# cairn tests\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
        with open(self.datadir / "pg_hba.conf", "w") as fh:
            fh.write(
                "# TYPE  DATABASE  USER      ADDRESS       METHOD\n"
                "local   all       all                     trust\n"
                f"host    all       {PW_USER}  127.0.0.1/32  scram-sha-256\n"
                f"host    all       {PW_USER}  ::1/128       scram-sha-256\n"
                "host    all       all       127.0.0.1/32  trust\n"
                "host    all       all       ::1/128       trust\n"
            )

    def _start_first_time(self) -> None:
        # The free port may be taken between probing and binding: retry with another one.
        for attempt in range(5):
            self.port = _free_port(self.host)
            try:
                self.start()
                return
            except PostgresError:
                log = self._log_tail(200)
                if attempt == 4 or not ("could not bind" in log or "could not create any TCP/IP" in log):
                    raise

    def _create_password_role(self) -> None:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(PW_USER), sql.Literal(PW_PASSWORD)
                )
            )

    # -- state -------------------------------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.datadir / "postmaster.pid"

    def postmaster_pid(self) -> int | None:
        """PID recorded in postmaster.pid (the process may be dead), or None."""
        try:
            first = self.pid_file.read_text().split("\n", 1)[0].strip()
            return int(first)
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _pid_alive(pid)

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    # -- lifecycle ---------------------------------------------------------------------------------
    def _remove_stale_files(self) -> None:
        """After a crash: postgres refuses to start while postmaster.pid names a process that still exists
        (a killed, unreaped postmaster is a zombie), so remove the lock files once the process is dead."""
        pid = self.postmaster_pid()
        if pid is not None and _pid_alive(pid):
            return
        stale = [self.pid_file, self.datadir / f".s.PGSQL.{self.port}.lock"]
        if pid is not None:
            stale.append(self.datadir / f".s.PGSQL.{self.port}")
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def start(self) -> None:
        """Start (again) on the same port; returns once the server accepts connections."""
        if self._closed:
            raise PostgresError("cluster is closed")
        if self.is_running():
            return
        self._remove_stale_files()
        timeout = self.start_timeout
        self._run(
            "pg_ctl", "start",
            "-D", str(self.datadir),
            "-l", str(self.logfile),
            "-o", f"-p {self.port}",
            "-w", "-t", str(int(timeout)),
        )  # fmt: skip
        if not _wait_for(self.accepts_connections, timeout):
            raise PostgresError(f"server on port {self.port} does not accept connections{self._log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """Shut down (``mode``: pg_ctl's fast, which disconnects clients, or immediate); returns once it is gone."""
        if not self.is_running():
            self._remove_stale_files()
            return
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60")

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster. Returns once it and its backends are gone."""
        pid = self.postmaster_pid()
        if pid is None or not _pid_alive(pid):
            return
        children = _child_pids(pid)
        os.kill(pid, signal.SIGKILL)
        if not _wait_for(lambda: not _pid_alive(pid), 10):
            raise PostgresError(f"postmaster {pid} survived SIGKILL")
        # Backends notice the postmaster's death and exit by themselves; a new postmaster cannot start while
        # they still hold the old shared memory, so wait for them (and force them after a while).
        if not _wait_for(lambda: not any(_pid_alive(c) for c in children), 10):
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            _wait_for(lambda: not any(_pid_alive(c) for c in children), 10)

    def close(self) -> None:
        """Stop the server (or kill it if stopping fails) and delete its directory. Idempotent."""
        if self._closed:
            return
        try:
            if self.datadir.exists() and self.is_running():
                try:
                    self.stop()
                except PostgresError:
                    self.kill()
        finally:
            self._closed = True
            shutil.rmtree(self.base, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<PgCluster {self.host}:{self.port} {self.datadir}>"


# --------------------------------------------------------------------------------------------------
# External server


class ExternalPg(PgServer):
    """A server we do not manage, e.g. a CI service container, given as ``TEST_POSTGRES_URL``.

    The URL's user must be allowed to create databases. stop()/start()/kill() raise `NotSupported`.
    """

    controllable = False
    has_password_role = False

    def __init__(self, url: str | None = None) -> None:
        super().__init__()
        url = url or os.environ.get(ENV_URL)
        if not url:
            raise PostgresUnavailable(f"{ENV_URL} is not set")
        self.base_url = url
        params = conninfo_to_dict(url)
        host = params.get("host") or "localhost"
        if "," in host or host.startswith("/"):
            raise PostgresError(f"{ENV_URL} must name one TCP host, got {host!r}")
        self.host = host
        self.port = int(params.get("port") or 5432)
        self._user = params.get("user") or "postgres"
        self._password = params.get("password")
        self._dbname = params.get("dbname") or "postgres"
        self._closed = False
        try:
            with psycopg.connect(self._admin_url(), connect_timeout=10) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise PostgresError(f"cannot connect to {ENV_URL} ({self.host}:{self.port}): {exc}") from exc

    def url(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        if user == "postgres" and password is None:
            user, password = self._user, self._password  # "the admin user" is whoever the URL names
        return _build_url(self.host, self.port, dbname, user, password)

    def _admin_url(self, dbname: str | None = None) -> str:
        return _build_url(self.host, self.port, dbname or self._dbname, self._user, self._password)

    def close(self) -> None:
        """Drop the databases this object created and still exist."""
        if self._closed:
            return
        self._closed = True
        with self._created_lock:
            leftovers = sorted(self._created)
        for name in leftovers:
            with contextlib.suppress(psycopg.Error):
                self.drop_database(name)

    def __repr__(self) -> str:
        return f"<ExternalPg {self.host}:{self.port}>"


def open_test_server() -> PgServer:
    """`ExternalPg` if ``TEST_POSTGRES_URL`` is set, else a new `PgCluster`.

    Raises `PostgresUnavailable` when no PostgreSQL can be had on this machine.
    """
    if os.environ.get(ENV_URL):
        return ExternalPg()
    return PgCluster()
