"""What a send produces, as plain data the GUI turns into signals."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Token:
    """A piece of the reply as it streams."""

    text: str


@dataclass(frozen=True)
class Thinking:
    """A piece of the model's reasoning as it streams (thinking models; see chat/thinking.py): shown apart from the
    answer, stored with it, never sent back to the model."""

    text: str


@dataclass(frozen=True)
class ReplyDone:
    """The reply is complete and stored. ``stopped`` when the user stopped it (the partial reply is kept)."""

    message_id: str
    text: str
    stopped: bool = False
    checkpoint_id: str = ""
    """The run's own newest checkpoint: what to show now, and what the next message continues."""


@dataclass(frozen=True)
class ReplyFailed:
    """The model call failed; the user's message is stored and ``retry`` will try the reply again."""

    message: str
    kind: str  # "auth", "model", "server", "network", "timeout", "bad_request", "unknown"
    partial_text: str = ""
    retry_after: float | None = None
    """Seconds the server asked to wait before trying again (a rate limit's ``Retry-After``), if it said."""


ChatEvent = Token | Thinking | ReplyDone | ReplyFailed
