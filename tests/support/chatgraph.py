"""Graphs with a deterministic model node, for storage tests that need real graph turns.

``build_graph`` is the app's chat (``ChatState``); ``scenario_graph`` has a snapshot every 3 message updates, a
``Topic`` channel LangGraph appends to in place, and a model that can fail once or interrupt to ask first.
"""

from __future__ import annotations

from typing import Annotated, Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.channels.topic import Topic
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from typing_extensions import TypedDict

from chat.state import ChatState, messages_reducer, with_id

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


class State(TypedDict):
    # A snapshot every 3 updates, so a few turns cross several (the app's is every 200).
    messages: Annotated[list[AnyMessage], DeltaChannel(messages_reducer, snapshot_frequency=3)]
    # LangGraph appends to this list in place, step after step.
    notes: Annotated[list[str], Topic(str, accumulate=True)]


class Model:
    """A deterministic model node that can fail once or ask the user first."""

    def __init__(self) -> None:
        self.fail_next = False

    async def __call__(self, state: State) -> dict[str, Any]:
        last = str(state["messages"][-1].content)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the model is down")
        if last.startswith("ask"):
            answer = interrupt("sure?")
            last = f"{last} ({answer})"
        return {"messages": [with_id(AIMessage(f"re: {last}"))], "notes": [f"answered {len(state['messages'])}"]}


def scenario_graph(saver: Any, model: Model) -> Any:
    graph = StateGraph(State)
    graph.add_node("model", model)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile(checkpointer=saver)


def said(text: str) -> dict[str, Any]:
    return {"messages": [with_id(HumanMessage(text))]}
