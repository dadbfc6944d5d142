"""The conversation state: a message list stored as deltas, so storage does not grow with the square of a chat.

With a plain ``MessagesState`` every step re-stores the whole list (1.3 GB in SQLite for a 1,000-turn chat).
A ``DeltaChannel`` stores each step's new messages once plus a snapshot every ``SNAPSHOT_EVERY`` updates, which
bounds how far a read must replay. The reducer is LangGraph's batch reducer for delta channels with the part of
``add_messages`` it leaves out that a chat needs: chunks become messages and every message gets a stable id at
the point it is written (the reducer must be deterministic, so it cannot invent ids while replaying).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from langchain_core.messages import AnyMessage, BaseMessage, BaseMessageChunk, message_chunk_to_message
from langgraph.channels.delta import DeltaChannel
from langgraph.pregel._messages import _messages_delta_reducer
from typing_extensions import TypedDict

SNAPSHOT_EVERY = 200
"""Updates between full snapshots: two per turn, so a snapshot every 100 turns."""


def messages_reducer(state: list[AnyMessage], writes: Sequence[Any]) -> list[AnyMessage]:
    return _messages_delta_reducer(state, [_normalise(w) for w in writes])


def _normalise(write: Any) -> Any:
    if isinstance(write, list):
        return [_normalise_one(m) for m in write]
    return _normalise_one(write)


def _normalise_one(message: Any) -> Any:
    if isinstance(message, BaseMessageChunk):
        message = message_chunk_to_message(message)
    return message


def with_id(message: BaseMessage) -> BaseMessage:
    """The message with a fresh id if it has none (call where the message is made, not in the reducer)."""
    if isinstance(message, BaseMessageChunk):
        message = message_chunk_to_message(message)
    if message.id is None:
        message = message.model_copy(update={"id": str(uuid.uuid4())})
    return message


class ChatState(TypedDict):
    messages: Annotated[list[AnyMessage], DeltaChannel(messages_reducer, snapshot_frequency=SNAPSHOT_EVERY)]
