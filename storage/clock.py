"""Checkpoint ids as a hybrid logical clock: a new id sorts after every id this process has seen.

LangGraph calls the newest checkpoint of a thread the one with the largest id, and its delta-history reads assume a
checkpoint's ancestors have smaller ids. Ids are UUID v6 stamps of the writing machine's wall clock, so a machine
whose clock is behind writes a turn that sorts *before* the one it continues: the turn is hidden on every device.

LangGraph makes ids with ``langgraph.checkpoint.base.id.uuid6``, which never issues a timestamp at or below the
module's ``_last_v6_timestamp``. Raising that floor to the timestamp of every id Cairn sees (read from any tier,
brought down by the sync, or found in the local file at start) makes every id written afterwards larger than all
of them, whatever the wall clock says, while the ids stay ordinary UUID v6 that every saver accepts. That is a
hybrid logical clock: wall time when it is ahead, the largest seen stamp plus one tick when it is not.

The floor is a private name of LangGraph's: ``check_lever`` proves at start that raising it still works (a
LangGraph upgrade that renames it fails loudly there, and in the tests, instead of silently reordering turns).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from langgraph.checkpoint.base import id as lg_id

from storage.schema import checkpoint_stamp

_lock = threading.Lock()


stamp = checkpoint_stamp


def observe(checkpoint_id: str | None) -> None:
    """This device has seen ``checkpoint_id``: every id made from now on sorts after it."""
    if not checkpoint_id:
        return
    ticks = stamp(checkpoint_id)
    if ticks is None:
        return
    with _lock:
        floor: int | None = lg_id._last_v6_timestamp
        if floor is None or ticks > floor:
            lg_id._last_v6_timestamp = ticks  # type: ignore[assignment]  # typed None: its initial value


def observe_all(checkpoint_ids: Iterable[str]) -> None:
    newest = max((i for i in checkpoint_ids if i), default=None, key=lambda i: stamp(i) or 0)
    observe(newest)


def check_lever() -> None:
    """Raise RuntimeError unless raising the floor orders LangGraph's next id after it (see the module's doc)."""
    if not hasattr(lg_id, "_last_v6_timestamp"):
        raise RuntimeError("langgraph.checkpoint.base.id._last_v6_timestamp is gone: checkpoint ids cannot be ordered")
    probe = str(lg_id.uuid6())
    ahead = (stamp(probe) or 0) + 36_000_000_000  # one hour of ticks
    with _lock:
        saved = lg_id._last_v6_timestamp
        lg_id._last_v6_timestamp = ahead  # type: ignore[assignment]  # typed None: its initial value
        try:
            made = stamp(str(lg_id.uuid6())) or 0
        finally:
            lg_id._last_v6_timestamp = saved  # the probe ids are never stored
    if made <= ahead:
        raise RuntimeError("LangGraph's uuid6 ignores its floor: checkpoint ids cannot be ordered across devices")
