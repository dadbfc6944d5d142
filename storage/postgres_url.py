"""A Postgres URL (or libpq ``key=value`` string): whether it can ever connect, and where it points.

The one reading of the URL for storage (``check_postgres_url`` before each connect), the connection test in Settings,
the badge's host and the password dialog's "where": the same rules everywhere, and never a password in a message.
libpq's own parser (through psycopg) reads it, imported only when a URL is read: the window paints without psycopg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

POSTGRES_SCHEMES = ("postgresql", "postgres")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


@dataclass(frozen=True)
class PostgresAddress:
    host: str
    port: str
    user: str
    dbname: str

    @property
    def address(self) -> str:
        """host:port (a socket directory alone)."""
        return self.host if self.host.startswith("/") else f"{self.host}:{self.port}"

    @property
    def where(self) -> str:
        """host:port/database, as a person names a database."""
        return f"{self.address}/{self.dbname}"


def parse_postgres_url(url: str) -> PostgresAddress:
    """Where ``url`` points. ValueError, worded for the user and without the password, when it can never connect
    whatever the network does: no URL, another scheme, libpq cannot parse it, a port that is not a port, an unknown
    sslmode."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    from storage.secrets import mask_secrets

    if not url.strip():
        raise ValueError("no URL is set")
    scheme, sep, _ = url.partition("://")
    if sep and _SCHEME.fullmatch(scheme) and scheme.lower() not in POSTGRES_SCHEMES:
        raise ValueError(f"it starts with {scheme[:20]}://; a PostgreSQL URL starts with postgresql://")
    try:
        params = conninfo_to_dict(url)
    except Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "libpq cannot read it"
        raise ValueError(mask_secrets(first)) from None
    port = str(params.get("port") or "5432")
    for part in port.split(","):
        part = part.strip()
        shown = part if len(part) <= 20 else part[:17] + "..."
        if not (part.isascii() and part.isdigit()):
            raise ValueError(f"the port {shown!r} is not a number")
        if not 1 <= int(part) <= 65535:
            raise ValueError(f"the port {shown!r} is not a number from 1 to 65535")
    sslmode = params.get("sslmode")
    if sslmode is not None and str(sslmode) not in SSL_MODES:
        raise ValueError(f"sslmode {str(sslmode)[:20]!r} is not one of {', '.join(SSL_MODES)}")
    user = str(params.get("user") or "")
    return PostgresAddress(
        host=str(params.get("host") or params.get("hostaddr") or "localhost"),
        port=port,
        user=user,
        dbname=str(params.get("dbname") or user),
    )


def check_postgres_url(url: str) -> None:
    """Raise ValueError("not a valid Postgres URL: ...") for a URL that can never connect (see parse_postgres_url)."""
    try:
        parse_postgres_url(url)
    except ValueError as exc:
        raise ValueError(f"not a valid Postgres URL: {exc}") from None
