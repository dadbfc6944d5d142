"""What the badge, the storage details and ``doctor`` show: plain data, no behaviour."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from storage.postgres_url import parse_postgres_url

TierName = Literal["postgres", "sqlite", "memory"]
TierState = Literal["active", "connected", "standby", "connecting", "down", "failed", "off"]


NOT_CONFIGURED = "No server is set up: your conversations are kept on this computer"
SWITCHED_OFF = "Syncing with the server is switched off in Settings"
INVALID_URL = "The server address in Settings is not valid"


@dataclass(frozen=True)
class TierStatus:
    state: TierState
    reason: str = ""
    """Why, for the details' technical part, the doctor and the log: the exception's class and text."""
    detail: dict[str, Any] = field(default_factory=dict)
    cause: str = ""
    """Why, in words for people ("Can't reach the server: connection refused"); empty when all is well."""


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
    def host(self) -> str:
        """The configured server's host name (from the masked URL: never a password); empty when none is."""
        if not self.postgres_url:
            return ""
        try:
            return parse_postgres_url(self.postgres_url).host
        except ValueError:
            return ""

    @property
    def server_configured(self) -> bool:
        """A server is set up to sync with (reachable or not); False when Cairn keeps words locally by choice."""
        postgres = self.tiers.get("postgres")
        if postgres is None or postgres.state == "off":
            return postgres is not None and postgres.cause == INVALID_URL  # meant to sync, but cannot
        return True

    @property
    def cause(self) -> str:
        """Why the active tier is the active tier, in words for people (``reason`` has the technical words)."""
        postgres = self.tiers.get("postgres", TierStatus("off"))
        sqlite = self.tiers.get("sqlite", TierStatus("off"))
        if self.active_tier == "postgres":
            if self.local_failed:
                return f"This computer's copy can't be written: {sqlite.cause or 'the file cannot be used'}"
            return ""
        if self.active_tier == "sqlite":
            return postgres.cause or NOT_CONFIGURED
        local = f"This computer's copy can't be written: {sqlite.cause or 'the file cannot be used'}"
        if self.server_configured and postgres.cause:
            return f"{local}. {postgres.cause}"
        return local

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
        data["cause"] = self.cause
        return data
