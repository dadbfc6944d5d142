"""The one compiled graph every conversation runs on: a model node over ``ChatState``; a conversation is a thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, BaseMessageChunk, SystemMessage, message_chunk_to_message
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from chat.deadlines import within_limits
from chat.offload import model_thread
from chat.state import ChatState, with_id
from chat.thinking import InlineThinking, reasoning_of, separated

MODEL_NODE = "model"


@dataclass(frozen=True)
class ChatContext:
    """What one run needs besides the stored messages.

    Passed as the run's ``context``, never in ``configurable``: LangGraph copies every string in ``configurable``
    into each checkpoint's metadata, which would store the system prompt with every step of every conversation.
    """

    model: Callable[[], BaseChatModel]
    """Gives the conversation's model; called inside the node, so a missing model fails after the user's message is
    stored (and Retry can answer it once one is chosen)."""
    system_prompt: str = ""
    offload: bool = True
    """Make the model call on the model thread (``chat.offload``), not on the loop running the graph: building the
    request from a long history and parsing the stream take the loop away for a visible moment otherwise."""
    first_token_timeout: float | None = None
    """Seconds to wait for the reply's first word (``chat.deadlines``); None: no limit."""
    token_timeout: float | None = None
    """Seconds of silence allowed between words once the reply flows; None: no limit."""


async def call_model(state: ChatState, config: RunnableConfig, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    """Ask the conversation's model (passed per run in the context: one graph serves every model)."""
    context = runtime.context
    history = list(state["messages"])
    if context.system_prompt:
        history = [SystemMessage(context.system_prompt), *history]

    async def ask() -> BaseMessage:
        model = context.model()
        return await within_limits(
            lambda watch: _streamed_reply(model.with_config(callbacks=[watch]), history, config),
            context.first_token_timeout,
            context.token_timeout,
        )

    reply = await (model_thread().run(ask()) if context.offload else ask())
    if isinstance(reply, AIMessage):
        reply = separated(reply)
    return {"messages": [with_id(reply)]}


STREAM_TIMES = "cairn_stream"
"""The key in a reply's ``response_metadata`` holding how its stream went, in seconds: ``waited`` (to the first
token), ``thinking`` (reasoning, when there was some) and ``writing`` (the answer). With the server's token counts
(``usage_metadata``) they give the speed shown under the reply."""


async def _streamed_reply(
    model: Runnable[Any, Any], history: Sequence[BaseMessage], config: RunnableConfig
) -> BaseMessage:
    """The model's reply, streamed (LangGraph hands each chunk to the window as it comes) and timed."""
    started = time.monotonic()
    inline = InlineThinking()
    first_thought: float | None = None
    first_answer: float | None = None
    last = started
    reply: BaseMessageChunk | None = None
    async for chunk in model.astream(history, config):
        now = time.monotonic()
        text = chunk.content if isinstance(chunk.content, str) else ""
        parts = list(inline.feed(text)) if text else []
        if first_thought is None and (reasoning_of(chunk) or any(kind == "reasoning" for kind, _ in parts)):
            first_thought = now
        if first_answer is None and any(kind == "answer" and piece.strip() for kind, piece in parts):
            first_answer = now
        if text or reasoning_of(chunk):
            last = now
        reply = chunk if reply is None else reply + chunk
    if reply is None:
        raise RuntimeError("The model server ended the reply without sending anything")
    message = message_chunk_to_message(reply)
    began = first_thought if first_thought is not None else first_answer
    times = {
        "waited": round((began if began is not None else last) - started, 3),
        "thinking": round((first_answer or last) - first_thought, 3) if first_thought is not None else 0.0,
        "writing": round(last - first_answer, 3) if first_answer is not None else 0.0,
    }
    return message.model_copy(update={"response_metadata": {**message.response_metadata, STREAM_TIMES: times}})


def build_chat_graph(checkpointer: BaseCheckpointSaver[Any]) -> Any:
    graph = StateGraph(ChatState, context_schema=ChatContext)
    # LangGraph's overloads know nodes taking (state, config) or (state, runtime), not all three; it calls this one
    # with all three (it reads the parameters' names).
    graph.add_node(MODEL_NODE, call_model)  # type: ignore[call-overload]
    graph.add_edge(START, MODEL_NODE)
    graph.add_edge(MODEL_NODE, END)
    return graph.compile(checkpointer=checkpointer)
