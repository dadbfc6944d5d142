"""What the view and the list redo when something changes: only what changed, with the same result as a full redo.

A streaming reply renders only its unfinished tail (``gui.chat_view.StableSplit``), the Regenerate link moves by
rewriting one line, and a list refresh that brings the same conversations updates items in place. Each is checked
against doing everything again from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from PySide6.QtGui import QTextCursor, QTextFrame
from PySide6.QtWidgets import QApplication

import gui.chat_view
from gui.chat_view import STREAM_KEY, ChatView, StableSplit, action_href
from gui.markdown import render_markdown
from gui.sidebar import Sidebar
from tests.support.model_server import tokenize


@dataclass(frozen=True)
class Message:
    id: str
    role: str
    text: str
    stopped: bool = False


@dataclass(frozen=True)
class Conversation:
    thread_id: str
    title: str = ""
    pinned: bool = False
    updated: float = 0.0


REPLY = """## Setting it up

Install it first, then **configure** the `server`:

1. Download the package.

2. Run the installer:
   - on Linux, as root;
   - on macOS, from the disk image.

3. Start it.

```python
def main():
    server = Server()

    server.run()  # the blank line above is inside the fence
```

> A quote that spans
> two lines.

| setting | value |
|---|---|
| port | 8080 |

- tight
- list

    an indented code block

---

~~~~
a fence of four tildes

~~~
still inside it
~~~~

A [link](https://example.com) and the end.
"""


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
def test_stable_split_cuts_only_where_nothing_that_follows_can_change_what_is_before(
    text: str, cut_before: str | None
) -> None:
    expected = 0 if cut_before is None else text.rindex(cut_before)
    assert StableSplit().advance(text) == expected
    pieces = StableSplit()
    for end in range(1, len(text) + 1):  # fed a character at a time, as tokens come: the same cut
        pieces.advance(text[:end])
    assert pieces.split == expected


def _frame_content(view: ChatView, frame: QTextFrame) -> tuple[str, float]:
    QApplication.processEvents()
    cursor = frame.firstCursorPosition()
    cursor.setPosition(frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
    height = view.document().documentLayout().frameBoundingRect(frame).height()
    return cursor.selection().toPlainText(), height


def _all_at_once(view: ChatView, text: str) -> None:
    """What the view showed before it rendered only the tail: the header and the whole reply, in one insertion."""
    view.begin_reply()
    frame = view._stream_frame
    assert frame is not None
    muted = view._theme.muted
    rendered = render_markdown(text, view._theme, code_href=lambda i: action_href("code", STREAM_KEY, str(i)))
    cursor = frame.firstCursorPosition()
    cursor.setPosition(frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
    cursor.insertHtml(
        f'<p style="margin-bottom:4px"><b>Assistant</b> <span style="color:{muted}">· writing</span>'
        f' &nbsp;<a href="{action_href("stop")}">Stop</a></p>{rendered.html}'
    )
    # Inserted this way the header got a 6 px bottom margin; a finished message's header has none, and the
    # streaming one now has none either (no jump when the reply completes). Compare the rest.
    header = QTextCursor(frame.firstCursorPosition())
    block_format = header.blockFormat()
    block_format.setBottomMargin(0)
    header.setBlockFormat(block_format)


def test_a_reply_streamed_in_pieces_looks_exactly_as_if_rendered_at_once(qtbot: Any, monkeypatch: Any) -> None:
    streamed, whole = ChatView(), ChatView()
    for view in (streamed, whole):
        qtbot.addWidget(view)
        view.resize(700, 600)
        view.show()
    rendered: list[int] = []
    original = gui.chat_view.render_markdown

    def counting(text: str, *args: Any, **kwargs: Any) -> Any:
        rendered.append(len(text))
        return original(text, *args, **kwargs)

    monkeypatch.setattr(gui.chat_view, "render_markdown", counting)
    streamed.begin_reply()
    for number, token in enumerate(tokenize(REPLY * 3)):
        streamed.append_tokens(token)
        if number % 3 == 0:
            streamed._flush_stream()  # what the flush timer does, made deterministic
    streamed._flush_stream()
    monkeypatch.setattr(gui.chat_view, "render_markdown", original)
    _all_at_once(whole, REPLY * 3)

    assert streamed._stream_frame is not None and whole._stream_frame is not None
    streamed_text, streamed_height = _frame_content(streamed, streamed._stream_frame)
    whole_text, whole_height = _frame_content(whole, whole._stream_frame)
    assert streamed_text == whole_text.rstrip(" ")  # (a trailing space after the last word is not drawn)
    assert streamed_height == whole_height
    assert streamed.hrefs() == whole.hrefs()
    assert streamed._code[STREAM_KEY] == render_markdown(REPLY * 3).code_blocks  # every Copy link, in order
    # Each render was of the unfinished tail, not of the whole reply so far.
    assert max(rendered) < len(REPLY)


def test_the_regenerate_link_moves_without_changing_anything_else(qtbot: Any) -> None:
    messages = [
        Message("u1", "user", "Question?"),
        Message("a1", "assistant", REPLY),
        Message("u2", "user", "Another?"),
        Message("a2", "assistant", "Short **answer**.\n\n```sh\nls\n```"),
    ]
    view, fresh = ChatView(), ChatView()
    for widget in (view, fresh):
        qtbot.addWidget(widget)
        widget.resize(700, 600)
        widget.show()
    view.show_conversation("t", messages)
    assert action_href("regenerate") in view.hrefs()
    view.set_busy(True)
    assert action_href("regenerate") not in view.hrefs()
    view.set_busy(False)
    view.append_message(Message("u3", "user", "And then?"))
    view.begin_reply()
    view.append_tokens("Then this.")
    view.finish_reply(Message("a3", "assistant", "Then this."))
    fresh.show_conversation(
        "t", [*messages, Message("u3", "user", "And then?"), Message("a3", "assistant", "Then this.")]
    )
    QApplication.processEvents()
    assert view.toPlainText() == fresh.toPlainText()
    assert view.hrefs() == fresh.hrefs()
    assert view.hrefs().count(action_href("regenerate")) == 1
    layout, fresh_layout = view.document().documentLayout(), fresh.document().documentLayout()
    assert layout.documentSize() == fresh_layout.documentSize()


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
