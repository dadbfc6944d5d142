"""storage/postgres_url.py: the one reading of a Postgres URL (storage, the connection test, the badge, the password
dialog): where it points, and why it can never connect, in words without the password."""

from __future__ import annotations

import pytest

from storage.postgres_url import PostgresAddress, check_postgres_url, parse_postgres_url


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("postgresql://u:secret@db.example.com:6543/chats", PostgresAddress("db.example.com", "6543", "u", "chats")),
        ("postgres://db.example.com/chats?sslmode=require", PostgresAddress("db.example.com", "5432", "", "chats")),
        ("postgresql://u@/chats?host=/run/postgresql", PostgresAddress("/run/postgresql", "5432", "u", "chats")),
        ("host=10.0.0.2 port=5433 user=me", PostgresAddress("10.0.0.2", "5433", "me", "me")),
        ("postgresql://", PostgresAddress("localhost", "5432", "", "")),
    ],
)
def test_where_a_url_points(url: str, address: PostgresAddress) -> None:
    assert parse_postgres_url(url) == address
    check_postgres_url(url)


def test_where_reads_as_a_person_names_a_database() -> None:
    assert parse_postgres_url("postgresql://u@db:6543/chats").where == "db:6543/chats"
    assert parse_postgres_url("postgresql://u@/chats?host=/tmp").where == "/tmp/chats"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "no URL is set"),
        ("http://example.com/db", "it starts with http://"),
        ("postgresql://u:secret@host:notaport/db", "the port 'notaport' is not a number"),
        ("postgresql://u:secret@host:99999/db", "the port '99999' is not a number from 1 to 65535"),
        ("postgresql://u:secret@host/db?sslmode=sometimes", "sslmode 'sometimes' is not one of"),
        ("postgresql://u:secret@[::1:5432/db", ""),
        ("garbage", ""),
    ],
)
def test_a_url_that_can_never_connect_is_told_without_its_password(url: str, words: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_postgres_url(url)
    assert words in str(refused.value)
    assert "secret" not in str(refused.value)
    with pytest.raises(ValueError, match=r"^not a valid Postgres URL: "):
        check_postgres_url(url)
