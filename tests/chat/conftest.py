"""The chat tests' fixtures: a real model server, the conversation service on real storage (SQLite), and a reopen
that is what an app restart sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chat.endpoints import Endpoint
from chat.service import ConversationService
from tests.support.chat import (
    LIMITS,
    MODEL,
    Reopen,
)
from tests.support.model_server import ModelServer


@pytest.fixture
async def server() -> AsyncIterator[ModelServer]:
    async with ModelServer() as model_server:
        yield model_server


@pytest.fixture
async def service(open_storage: Any, tmp_path: Path, server: ModelServer) -> ConversationService:
    storage = await open_storage(tmp_path)
    return ConversationService(storage, Endpoint(server.base_url, MODEL, **LIMITS))


@pytest.fixture
def reopen(open_storage: Any, tmp_path: Path) -> Reopen:
    """Close a service's storage and open a new StorageManager on the same data dir: what an app restart sees."""

    async def make(service: ConversationService, endpoint: Endpoint | None = None) -> ConversationService:
        await service.storage.close()
        storage = await open_storage(tmp_path)
        return ConversationService(storage, endpoint or service.endpoint)

    return make
