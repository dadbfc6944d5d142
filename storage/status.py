"""What the badge, the storage details and ``doctor`` show: plain data, no behaviour."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TierName = Literal["postgres", "sqlite", "memory"]
TierState = Literal["active", "connected", "standby", "connecting", "down", "failed", "off"]


@dataclass(frozen=True)
class TierStatus:
    state: TierState
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TierEvent:
    """The active tier changed (or a tier failed): what, from where, to where, and why."""

    previous: TierName
    current: TierName
    reason: str
    at: float


@dataclass(frozen=True)
class StorageStatus:
    active_tier: TierName
    tiers: dict[TierName, TierStatus]
    pending_sync: int
    postgres_url: str  # masked
    data_dir: str
    keyring: str = ""
    last_sync_error: str = ""
    notice: str = ""
    """The last thing that happened to the user's words that they must hear of (a deleted file replaced, the
    local copy working again), in words; empty when nothing did."""
    pending_conversations: int = 0
    """Of ``pending_sync``: conversation index rows (a title, a pin, a deletion) Postgres lacks or holds older."""

    @property
    def local_failed(self) -> bool:
        """The local file takes no writes (missing, full, read-only): words are only where the active tier is."""
        sqlite = self.tiers.get("sqlite")
        return sqlite is not None and sqlite.state == "failed"

    @property
    def pending_words(self) -> str:
        """What is waiting to reach Postgres, in words: "2 turn steps and 1 conversation's title, pin or deletion"."""
        turns = self.pending_sync - self.pending_conversations
        parts = []
        if turns:
            parts.append(f"{turns} turn step{'s' if turns != 1 else ''}")
        if self.pending_conversations:
            n = self.pending_conversations
            parts.append(
                "1 conversation's title, pin or deletion" if n == 1 else f"{n} conversations' titles, pins or deletions"
            )
        return " and ".join(parts) or "nothing"

    @property
    def reason(self) -> str:
        """Why the active tier is the active tier, in one line."""
        if self.active_tier == "postgres":
            if self.local_failed:
                why = self.tiers["sqlite"].reason
                return f"only Postgres holds your words now: this computer keeps no copy ({why})"
            return "Postgres is reachable" + (f"; syncing {self.pending_words}" if self.pending_sync else "")
        postgres = self.tiers["postgres"]
        if self.active_tier == "sqlite":
            return postgres.reason or "Postgres is not configured"
        return self.tiers["sqlite"].reason or "no durable storage is available"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reason"] = self.reason
        return data
