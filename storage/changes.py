"""What changed in storage, as one event for every screen: the change feed.

Whatever changes the data (this window's own turns and edits, the sync in either direction, another Cairn process
on the same data folder), storage emits a ``Changes`` naming the threads concerned. A screen redraws only what an
event names and never keeps its own copy of the truth (Anki's shape: operations return what they changed, and one
broadcast tells every screen).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Source = Literal["local", "sync", "process"]
"""Who made the change: this process's own writes, the sync (from another device), another process on this file."""


@dataclass(frozen=True)
class Changes:
    turns: frozenset[str] = frozenset()
    """Threads with new checkpoints: a turn added (or a branch)."""
    index: frozenset[str] = frozenset()
    """Threads whose index row changed: a new conversation, its title, pin or model."""
    removed: frozenset[str] = frozenset()
    """Threads deleted."""
    source: Source = "local"

    def __bool__(self) -> bool:
        return bool(self.turns or self.index or self.removed)

    @property
    def threads(self) -> frozenset[str]:
        return self.turns | self.index | self.removed


def of(
    *, turns: Iterable[str] = (), index: Iterable[str] = (), removed: Iterable[str] = (), source: Source = "local"
) -> Changes:
    return Changes(frozenset(turns), frozenset(index), frozenset(removed), source)
