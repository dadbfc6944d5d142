"""A thinking model in the window: while its reasoning streams the reply says "Thinking… N s",
not "Waiting for the model"; the stored reply shows "▸ Thought for N s", which unfolds the reasoning on a click and
folds it again, and the tokens the server counted with the speed; the conversation's total is beside the model.
A real model server streaming ``reasoning_content``, real storage."""

from __future__ import annotations

from typing import Any

from tests.support.app import Cairn, type_and_send, until, window_of
from tests.support.cards import card, click, part, shown, shown_text
from tests.support.model_server import ModelServer


async def test_a_thinking_model_is_shown_thinking_then_its_thought_folded(
    qtbot: Any, cairn: Cairn, server: ModelServer
) -> None:
    server.reasoning = "First I consider the question carefully."
    server.reply = "The answer is 42."
    async with cairn() as app:
        window = window_of(app)
        view = window.view
        server.pause()  # held before the first word of the answer: the reasoning has been sent
        finished: list[str] = []
        window.replyFinished.connect(finished.append)
        type_and_send(qtbot, window, "what is it?")
        await server.wait_for_paused_async()
        await until(lambda: "Thinking…" in shown_text(view), "the reply saying the model thinks")
        assert "Waiting for the model" not in shown_text(view)
        server.resume()
        await until(lambda: bool(finished), "the reply")

        reply = view.messages()[-1]
        row = await card(view, reply.id)
        await until(lambda: "Thought for" in shown_text(view), "the folded thought")
        assert "consider the question" not in shown_text(view)  # folded
        # The server counts the reasoning and the answer: 6 tokens of thought, 4 of "The answer is 42."
        await until(lambda: shown(row, "usage"), "the reply's tokens")
        assert "10 tokens" in shown_text(view) and "tok/s" in shown_text(view)

        # The conversation's total, beside the model: what was sent and what came back, as the server counted.
        await until(lambda: window.usage_label.text().endswith(" tokens"), "the conversation's total")
        assert "10 in its replies" in window.usage_label.toolTip()

        thought = part(row, "thought")
        assert thought is not None
        await click(view, thought)
        await until(lambda: "First I consider the question carefully." in shown_text(view), "the thought unfolded")
        await click(view, thought)
        await until(lambda: "consider the question" not in shown_text(view), "the thought folded again")

        window.new_chat()
        assert window.usage_label.text() == ""
