"""The one compiled graph every conversation runs on: a model node over ``ChatState``; a conversation is a thread."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph

from chat.state import ChatState, with_id

MODEL_NODE = "model"


async def call_model(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
    """Ask the conversation's model (passed per run in ``configurable``: one graph serves every model)."""
    configurable = config.get("configurable", {})
    llm = configurable["llm"]
    system_prompt: str = configurable.get("system_prompt") or ""
    history = list(state["messages"])
    if system_prompt:
        history = [SystemMessage(system_prompt), *history]
    reply = await llm.ainvoke(history, config)
    return {"messages": [with_id(reply)]}


def build_chat_graph(checkpointer: BaseCheckpointSaver[Any]) -> Any:
    graph = StateGraph(ChatState)
    graph.add_node(MODEL_NODE, call_model)
    graph.add_edge(START, MODEL_NODE)
    graph.add_edge(MODEL_NODE, END)
    return graph.compile(checkpointer=checkpointer)
