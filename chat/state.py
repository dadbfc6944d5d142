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
from langgraph.checkpoint.base.id import uuid6
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


CREATED = "cairn_created"
"""The key in a message's ``response_metadata`` holding when it was made: a UUID v6 from LangGraph's generator, which
storage/clock.py keeps after every id this device has seen, so stamps order versions of a message causally whatever
the devices' clocks say (and give its time for showing). Never sent to the model (providers get role and content)."""


def with_id(message: BaseMessage) -> BaseMessage:
    """The message with a fresh id if it has none, and the time it was made (call where the message is made, not in
    the reducer). A reply keeps the id it streamed under: LangGraph would send a message whose id it had not streamed
    once more, whole."""
    if isinstance(message, BaseMessageChunk):
        message = message_chunk_to_message(message)
    update: dict[str, Any] = {}
    if message.id is None:
        update["id"] = str(uuid.uuid4())
    if CREATED not in message.response_metadata:
        update["response_metadata"] = {**message.response_metadata, CREATED: str(uuid6())}
    return message.model_copy(update=update) if update else message


def created_stamp(message: BaseMessage) -> str:
    """When the message was made, as a sortable stamp; "" for messages from before Cairn stamped them."""
    return str(message.response_metadata.get(CREATED, ""))


class ChatState(TypedDict):
    messages: Annotated[list[AnyMessage], DeltaChannel(messages_reducer, snapshot_frequency=SNAPSHOT_EVERY)]
