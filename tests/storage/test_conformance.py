"""LangGraph's checkpointer contract, against TieredSaver in each tier and against every raw saver it wraps."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from storage.backends import PostgresTarget
from storage.manager import StorageManager
from storage.threaded import ThreadedSaver
from storage.tiered import TieredSaver
from tests.support.places import unwritable_dir

KWARGS = {"autocommit": True, "prepare_threshold": None, "row_factory": dict_row}


async def _tiered(
    data_dir: Path | None, pg_url: str | None, expected_tier: str, prefer_async: bool = True
) -> AsyncIterator[TieredSaver]:
    target = PostgresTarget(url=pg_url, connect_timeout=2, prefer_async=prefer_async) if pg_url else None
    manager = StorageManager(data_dir=data_dir, postgres=target, retry_max_seconds=0.5)
    await manager.start(wait_for_postgres=True)
    assert manager.status().active_tier == expected_tier, manager.status()
    try:
        yield TieredSaver(manager)
    finally:
        await manager.close()


def _variants(pg_cluster: Any) -> dict[str, Callable[[], Any]]:
    def fresh_db() -> str:
        return pg_cluster.create_database()

    async def tiered_postgres() -> AsyncIterator[Any]:
        async for saver in _tiered(Path(tempfile.mkdtemp()), fresh_db(), "postgres"):
            yield saver

    async def tiered_postgres_direct() -> AsyncIterator[Any]:
        async for saver in _tiered(unwritable_dir(), fresh_db(), "postgres"):
            yield saver

    async def tiered_postgres_sync() -> AsyncIterator[Any]:
        async for saver in _tiered(unwritable_dir(), fresh_db(), "postgres", prefer_async=False):
            yield saver

    async def tiered_sqlite() -> AsyncIterator[Any]:
        async for saver in _tiered(Path(tempfile.mkdtemp()), None, "sqlite"):
            yield saver

    async def tiered_memory() -> AsyncIterator[Any]:
        async for saver in _tiered(unwritable_dir(), None, "memory"):
            yield saver

    async def raw_sqlite() -> AsyncIterator[Any]:
        async with aiosqlite.connect(Path(tempfile.mkdtemp()) / "raw.sqlite") as conn:
            yield AsyncSqliteSaver(conn)

    async def raw_memory() -> AsyncIterator[Any]:
        yield InMemorySaver()

    async def raw_postgres() -> AsyncIterator[Any]:
        async with AsyncConnectionPool(fresh_db(), kwargs=KWARGS, max_size=4, open=False) as pool:
            saver = AsyncPostgresSaver(pool)
            await saver.setup()
            yield saver

    async def raw_postgres_sync() -> AsyncIterator[Any]:
        with ConnectionPool(fresh_db(), kwargs=KWARGS, max_size=4, open=False) as pool:
            pool.open()
            saver = PostgresSaver(pool)
            saver.setup()
            yield ThreadedSaver(saver)

    return {
        "tiered-postgres": tiered_postgres,
        "tiered-postgres-direct": tiered_postgres_direct,
        "tiered-postgres-sync": tiered_postgres_sync,
        "tiered-sqlite": tiered_sqlite,
        "tiered-memory": tiered_memory,
        "raw-AsyncSqliteSaver": raw_sqlite,
        "raw-InMemorySaver": raw_memory,
        "raw-AsyncPostgresSaver": raw_postgres,
        "raw-PostgresSaver-threaded": raw_postgres_sync,
    }


VARIANTS = [
    "tiered-postgres",
    "tiered-postgres-direct",
    "tiered-postgres-sync",
    "tiered-sqlite",
    "tiered-memory",
    "raw-AsyncSqliteSaver",
    "raw-InMemorySaver",
    "raw-AsyncPostgresSaver",
    "raw-PostgresSaver-threaded",
]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_saver_passes_langgraph_conformance(variant: str, pg_cluster: Any) -> None:
    factory = checkpointer_test(name=variant)(_variants(pg_cluster)[variant])
    report = await validate(factory)
    failures = {name: result.failures for name, result in report.results.items() if result.failures}
    assert report.passed_all_base(), failures
    assert report.passed_all(), failures
