"""What the view and the list redo when something changes: only what changed, with the same result as a full redo.

A streaming reply renders only its unfinished tail (``gui.conversation.blocks.StreamSplitter`` cuts it where nothing
that follows can change what is before), a reload of the same conversation signals only the rows that changed,
Regenerate moves to the new last reply without touching the other cards, and a list refresh that brings the same
conversations updates items in place. Each is checked against doing everything again from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from chat.service import ChatMessage, Usage
from gui.conversation.blocks import StreamSplitter
from gui.conversation.view import QuickChatView
from gui.markdown import LIGHT
from gui.sidebar import Sidebar
from tests.support.cards import on_screen, rows


@dataclass(frozen=True)
class Conversation:
    thread_id: str
    title: str = ""
    pinned: bool = False
    updated: float = 0.0


@pytest.mark.parametrize(
    ("text", "cut_before"),
    [
        ("First.\n\nSecond.\n", "Second."),
        ("First.\n\nSeco", None),  # the line after the blank one is not complete yet
        ("```\ncode\n\nmore code\n", None),  # a blank line inside a fence
        ("```\ncode\n```\n\nAfter.\n", "After."),
        ("- a\n\n- b\n", None),  # the next item joins the list (a loose list)
        ("1. a\n\n2. b\n", None),
        ("Intro\n\n    indented\n", None),
        ("~~~~\nx\n~~~\n\ny\n", None),  # a shorter fence does not close a longer one
        ("Text\n\n> quote\n\nMore\n", "More"),
    ],
)
def test_a_streaming_reply_is_cut_only_where_nothing_that_follows_can_change_what_is_before(
    text: str, cut_before: str | None
) -> None:
    expected = 0 if cut_before is None else text.rindex(cut_before)
    whole = StreamSplitter(LIGHT)
    whole.scan(text)
    assert whole.split == expected
    pieces = StreamSplitter(LIGHT)
    for end in range(1, len(text) + 1):  # fed a character at a time, as tokens come: the same cut
        pieces.scan(text[:end])
    assert pieces.split == expected


class Signals:
    """What a model told its views, in order."""

    def __init__(self, view: QuickChatView) -> None:
        self.seen: list[tuple[str, int, int]] = []
        model = view.model
        model.dataChanged.connect(lambda a, b, _roles=(): self.seen.append(("changed", a.row(), b.row())))
        model.rowsInserted.connect(lambda _p, a, b: self.seen.append(("inserted", a, b)))
        model.rowsRemoved.connect(lambda _p, a, b: self.seen.append(("removed", a, b)))
        model.modelReset.connect(lambda: self.seen.append(("reset", -1, -1)))


def shown_view(qtbot: Any) -> QuickChatView:
    return on_screen(qtbot, QuickChatView(), (700, 600))


MESSAGES = [
    ChatMessage("u1", "user", "Question?"),
    ChatMessage("a1", "assistant", "An answer with `code`.\n\n```sh\nls\n```"),
    ChatMessage("u2", "user", "Another?"),
    ChatMessage("a2", "assistant", "Short **answer**."),
]


def test_a_reload_of_the_same_conversation_signals_only_the_rows_that_changed(qtbot: Any) -> None:
    view = shown_view(qtbot)
    view.show_conversation("t", MESSAGES)
    signals = Signals(view)
    view.set_messages("t", MESSAGES)
    assert signals.seen == []  # the same: nothing at all

    counted = ChatMessage("a1", "assistant", MESSAGES[1].text, usage=Usage(3, 12, 4.0))
    more = [MESSAGES[0], counted, *MESSAGES[2:], ChatMessage("u3", "user", "More?")]
    view.set_messages("t", more)
    assert signals.seen == [("changed", 1, 1), ("inserted", 4, 4)]  # its usage arrived; one message added
    assert counted.usage is not None
    assert view.model.entries[1].usage == {"tokens": 12.0, "perSecond": counted.usage.tokens_per_second}

    signals.seen.clear()
    edited = [*more[:2], ChatMessage("u2", "user", "Edited elsewhere?")]
    view.set_messages("t", edited)
    assert signals.seen == [("removed", 2, 4), ("inserted", 2, 2)]  # rows 0 and 1 are left as they are
    assert [e.text for e in view.model.entries] == [m.text for m in edited]


def regenerate_offered(view: QuickChatView) -> list[tuple[str, bool]]:
    return [(str(row.property("id")), bool(row.property("canRegenerate"))) for row in rows(view)]


def test_regenerate_moves_to_the_new_last_reply_without_touching_the_other_cards(qtbot: Any) -> None:
    view, fresh = shown_view(qtbot), shown_view(qtbot)
    view.show_conversation("t", MESSAGES)
    qtbot.waitUntil(lambda: len(rows(view)) == 4)
    assert regenerate_offered(view) == [("u1", False), ("a1", False), ("u2", False), ("a2", True)]
    signals = Signals(view)
    view.set_busy(True)  # a reply streams: no Regenerate
    qtbot.waitUntil(lambda: not any(offered for _id, offered in regenerate_offered(view)))
    view.set_busy(False)
    qtbot.waitUntil(lambda: regenerate_offered(view)[-1] == ("a2", True))
    assert signals.seen == []  # the cards' rows were not touched: Regenerate follows the view's state

    view.append_message(ChatMessage("u3", "user", "And then?"))
    view.begin_reply()
    view.append_tokens("Then this.")
    view.finish_reply(ChatMessage("a3", "assistant", "Then this."))
    fresh.show_conversation(
        "t", [*MESSAGES, ChatMessage("u3", "user", "And then?"), ChatMessage("a3", "assistant", "Then this.")]
    )
    assert [s for s in signals.seen if s[0] != "changed"] == [("inserted", 4, 4), ("inserted", 5, 5)]
    assert {s[1] for s in signals.seen if s[0] == "changed"} == {5}  # only the streaming reply's row changed
    qtbot.waitUntil(lambda: len(rows(view)) == len(rows(fresh)) == 6)
    qtbot.waitUntil(lambda: regenerate_offered(view) == regenerate_offered(fresh))
    assert regenerate_offered(view)[-1] == ("a3", True) and sum(o for _i, o in regenerate_offered(view)) == 1
    same = [(e.id, e.role, e.text, e.stopped) for e in view.model.entries]
    assert same == [(e.id, e.role, e.text, e.stopped) for e in fresh.model.entries]


def test_a_list_refresh_with_the_same_conversations_updates_items_in_place(qtbot: Any) -> None:
    sidebar = Sidebar()
    qtbot.addWidget(sidebar)
    rows = [Conversation(f"t{i}", f"Conversation {i}", updated=1_000_000.0 + i) for i in range(50)]
    sidebar.set_conversations(rows)
    items = [sidebar.item_for(r.thread_id) for r in rows]
    rows[3] = Conversation("t3", "Renamed", updated=rows[3].updated)
    sidebar.set_conversations(rows)
    assert [sidebar.item_for(r.thread_id) for r in rows] == items  # the same items: nothing was rebuilt
    assert sidebar.titles()[3] == "Renamed"
    assert "Renamed" in items[3].toolTip()
    tooltip = items[4].toolTip()
    rows[4] = Conversation("t4", rows[4].title, updated=rows[4].updated + 86_400)  # a new turn, a day later
    sidebar.set_conversations(rows)
    assert [sidebar.item_for(r.thread_id) for r in rows] == items  # the same date group: still in place
    day = datetime.fromtimestamp(rows[4].updated).strftime("%Y-%m-%d")
    assert items[4].toolTip() != tooltip and day in items[4].toolTip()

    moved = [rows[5], *rows[:5], *rows[6:]]
    sidebar.set_conversations(moved)
    assert sidebar.thread_ids() == [r.thread_id for r in moved]
    pinned = [Conversation("t9", "Pinned one", pinned=True), *(r for r in moved if r.thread_id != "t9")]
    sidebar.set_conversations(pinned)
    assert sidebar.pinned_ids() == ["t9"]
    assert sidebar.thread_ids() == [r.thread_id for r in pinned]
