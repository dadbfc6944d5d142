"""A chat graph with a deterministic model node, for storage tests that need real graph turns."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph

from chat.state import ChatState, with_id

REPLY_FILLER = "r" * 280


def build_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    graph = StateGraph(ChatState)

    async def model(state: ChatState) -> dict[str, Any]:
        last = state["messages"][-1].content
        return {"messages": [with_id(AIMessage(f"re: {str(last)[:20]} {REPLY_FILLER}"))]}

    graph.add_node("model", model)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile(checkpointer=saver)


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


async def turn(graph: Any, thread_id: str, text: str) -> dict[str, Any]:
    return await graph.ainvoke({"messages": [with_id(HumanMessage(text))]}, config(thread_id))


async def messages(graph: Any, thread_id: str) -> list[Any]:
    state = await graph.aget_state(config(thread_id))
    return list(state.values.get("messages", []))
