"""What the conversation view needs of the messages it shows and of their versions: protocols, so that the view does
not import the chat engine (``chat.service.ChatMessage`` and ``chat.service.Versions`` fit them)."""

from __future__ import annotations

from typing import Protocol


class MessageLike(Protocol):
    """What the view needs of a message (``chat.service.ChatMessage`` fits; the view does not import it)."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def stopped(self) -> bool: ...


class VersionsLike(Protocol):
    """Which version of a message is shown and the checkpoint showing each (``chat.service.Versions`` fits)."""

    @property
    def index(self) -> int: ...
    @property
    def checkpoints(self) -> tuple[str, ...]: ...
