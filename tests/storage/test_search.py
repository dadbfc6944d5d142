"""The storage search finds a word in stored messages whatever its case, in every tier, non-ASCII letters too.

It is the first pass of the conversation search (``ConversationService.search`` then reads the candidates' messages):
a conversation it misses is never shown, so a miss is what these tests look for.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.chatgraph import build_graph, turn
from tests.support.places import unwritable_dir

SAID = {
    "lisbon": "Planning a trip to Lisbon",
    "bruecke": "Über die Brücke nach Köln",
    "greek": "Καλημέρα κόσμε",
    "slash": r"C:\Users\me and a NUL \x00 here",
}


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def manager(request: pytest.FixtureRequest, open_storage: Any) -> Any:
    if request.param == "postgres":  # written straight to Postgres: the data dir cannot be used
        storage = await open_storage(unwritable_dir(), request.getfixturevalue("pg_url"))
    else:
        storage = await open_storage(unwritable_dir() if request.param == "memory" else Path(tempfile.mkdtemp()))
    assert storage.manager.status().active_tier == request.param
    graph = build_graph(storage.saver)
    for thread_id, text in SAID.items():
        await turn(graph, thread_id, text)
    return storage.manager


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("lisbon", {"lisbon"}),
        ("LISBON", {"lisbon"}),
        ("Trip To", {"lisbon"}),
        ("über", {"bruecke"}),
        ("ÜBER", {"bruecke"}),
        ("brücke", {"bruecke"}),
        ("köln", {"bruecke"}),
        ("καλημέρα", {"greek"}),
        ("ΚΑΛΗΜΈΡΑ", {"greek"}),
        (r"c:\users", {"slash"}),
        ("nowhere to be found", set()),
    ],
)
async def test_search_finds_words_in_any_case(manager: Any, text: str, found: set[str]) -> None:
    assert await manager.search_messages(text) == found
