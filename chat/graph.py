"""The one compiled graph every conversation runs on: a model node over ``ChatState``; a conversation is a thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from chat.deadlines import within_limits
from chat.offload import model_thread
from chat.state import ChatState, with_id

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
            lambda watch: model.with_config(callbacks=[watch]).ainvoke(history, config),
            context.first_token_timeout,
            context.token_timeout,
        )

    reply = await (model_thread().run(ask()) if context.offload else ask())
    return {"messages": [with_id(reply)]}


def build_chat_graph(checkpointer: BaseCheckpointSaver[Any]) -> Any:
    graph = StateGraph(ChatState, context_schema=ChatContext)
    graph.add_node(MODEL_NODE, call_model)
    graph.add_edge(START, MODEL_NODE)
    graph.add_edge(MODEL_NODE, END)
    return graph.compile(checkpointer=checkpointer)
