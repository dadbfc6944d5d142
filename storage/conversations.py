"""One row of the conversation index, and how two copies of it merge. Light: the window lists conversations from
this before the storage stack (LangGraph's savers) is imported."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Conversation:
    """One row of the conversation index."""

    thread_id: str
    title: str = ""
    model: str = ""
    created: float = 0.0
    updated: float = 0.0
    meta_changed: float = 0.0
    pinned: bool = False
    deleted: bool = False

    def __post_init__(self) -> None:
        # Every way a row is made (a rename on any tier, a merge, a sync) passes here, so every tier agrees.
        # Postgres text cannot hold NUL: a NUL in a thread id is refused (a changed id would be another
        # conversation); in a title or model name it is dropped, so a pasted title cannot stop the sync.
        if not isinstance(self.thread_id, str) or not self.thread_id:
            raise ValueError(f"thread_id must be a non-empty string, got {self.thread_id!r}")
        if "\x00" in self.thread_id:
            raise ValueError("thread_id must not contain NUL characters")
        for name in ("title", "model"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {type(value).__name__}")
            if "\x00" in value:
                object.__setattr__(self, name, value.replace("\x00", ""))


def row_to_conversation(row: Sequence[Any]) -> Conversation:
    thread_id, title, model, created, updated, meta_changed, pinned, deleted = row
    return Conversation(
        thread_id, title, model, float(created), float(updated), float(meta_changed), bool(pinned), bool(deleted)
    )


def _metadata_order(row: Conversation) -> tuple[float, str, str, bool]:
    """Which row's title, model and pin win: the newest edit; on a tie (two machines stamped the same time) the
    larger values, so that both machines pick the same row whichever merges first."""
    return (row.meta_changed, row.title, row.model, row.pinned)


def merge_conversations(mine: Conversation | None, theirs: Conversation) -> Conversation:
    """The merge every tier applies (SQLite and Postgres as SQL in storage/backends.py, held to this one by
    tests/storage/test_rule_copies.py): newest metadata wins, a deletion is forever, times widen. It is
    commutative, so two devices that exchange rows in any order hold the same row."""
    if mine is None:
        return theirs
    newer = theirs if _metadata_order(theirs) > _metadata_order(mine) else mine
    known = [c for c in (mine.created, theirs.created) if c]  # 0 is "not known yet", not the earliest time
    return replace(
        newer,
        created=min(known, default=0.0),
        updated=max(mine.updated, theirs.updated),
        meta_changed=max(mine.meta_changed, theirs.meta_changed),
        deleted=mine.deleted or theirs.deleted,
    )


def listed(rows: Iterable[Conversation]) -> list[Conversation]:
    """The conversation list: tombstones left out, pinned first, then the newest activity first."""
    return sorted((r for r in rows if not r.deleted), key=lambda r: (not r.pinned, -r.updated))
