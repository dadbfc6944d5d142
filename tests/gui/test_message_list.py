"""The Qt Quick prototype of the conversation (gui/conversation): what it promises beyond looking right.

A streaming reply signals its own row only; a 5,000-message conversation makes delegates for what is on screen
only; the toolbar's Copy copies the message and says so in place; the cards are in the conversation's order; and a
reply streamed piece by piece ends up exactly as the same text rendered whole. Real QML scenes in a real window,
offscreen (Qt Quick's software renderer).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QModelIndex, QPoint, QPointF, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtQuick import QQuickItem
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from gui.conversation.blocks import CHUNK_LINES, split_blocks
from gui.conversation.model import ROLES, BlockModel, MessageListModel
from gui.conversation.view import ConversationView
from tests.support.cards import Message, conversation, on_screen
from tests.support.model_server import tokenize

REPLY = """## Setting it up

Install it first, then **configure** the `server`:

1. Download the package.
2. Run the installer.

```python
def main():
    server = Server()

    server.run()  # the blank line above is inside the fence
```

| option | default |
|---|---|
| port | 8080 |

That is *all*.
"""


@pytest.fixture
def view(qtbot: QtBot) -> Iterator[ConversationView]:
    yield on_screen(qtbot, ConversationView())


def delegates(view: ConversationView) -> list[QQuickItem]:
    """The message delegates that exist now, top to bottom."""
    content = view.list_item().property("contentItem")
    found = [item for item in content.childItems() if item.objectName() == "message"]
    return sorted(found, key=lambda item: item.y())


def test_streaming_signals_only_its_own_row(qtbot: QtBot) -> None:
    model = MessageListModel()
    model.reset([])
    for message in conversation(50):
        model.finish_reply(message)  # not streaming: appends the message
    changed: list[tuple[int, int, list[int]]] = []
    model.dataChanged.connect(lambda top, bottom, roles: changed.append((top.row(), bottom.row(), list(roles))))
    inserted: list[tuple[int, int]] = []
    model.rowsInserted.connect(lambda _parent, first, last: inserted.append((first, last)))
    model.modelReset.connect(lambda: inserted.append((-1, -1)))
    model.begin_reply()
    assert inserted == [(50, 50)]
    blocks = model.data(model.index(50), model.ROLE["blocks"])
    assert isinstance(blocks, BlockModel)
    tokens = tokenize(REPLY)
    for start in range(0, len(tokens), 5):  # five tokens arrive at once, then the flush shows them
        for token in tokens[start : start + 5]:
            model.append_tokens(token)
        qtbot.waitUntil(lambda: model.stream_text() == model.entries[-1].text, timeout=2000)
    model.finish_reply(Message("r1", "assistant", REPLY))
    assert changed, "the streaming row was never signalled"
    assert {(top, bottom) for top, bottom, _roles in changed} == {(50, 50)}
    # Never "blocks": a delegate re-reading it would rebuild every item of the reply at each flush.
    assert all(model.ROLE["blocks"] not in roles for _top, _bottom, roles in changed)
    assert all(roles for _top, _bottom, roles in changed), "an empty role list means every role changed"
    assert inserted == [(50, 50)]
    assert model.flush_count <= len(tokens) // 5 + 2, "tokens were not coalesced"
    assert model.data(model.index(50), model.ROLE["id"]) == "r1"
    assert sorted(model.roleNames().values()) == sorted(name.encode() for name in ROLES)


def test_streamed_reply_ends_as_the_whole_text_rendered(qtbot: QtBot) -> None:
    """Finishing a reply changes nothing that was drawn: the blocks and chunks built piece by piece are the blocks
    of the whole text (a long code block included, cut in chunks while it grew)."""
    code = "".join(f"    line_{i} = {i}  # a comment\n" for i in range(3 * CHUNK_LINES + 7))
    text = REPLY + "\nAnd a long one:\n\n```python\ndef long():\n" + code + "```\n\nThe end.\n"
    model = MessageListModel()
    model.begin_reply()
    blocks = model.entries[-1].blocks
    assert blocks is not None
    for token in tokenize(text):
        model.append_tokens(token)
        model._flush()  # every token rendered: the most intermediate states
    shown = [(row.block, row.chunks.chunks if row.chunks else None) for row in blocks.rows]
    changes: list[int] = []
    blocks.dataChanged.connect(lambda top, _bottom, _roles: changes.append(top.row()))
    model.finish_reply(Message("r1", "assistant", text))
    whole = split_blocks(text, model.theme)
    assert [row.block for row in blocks.rows] == whole
    assert [b for b, _c in shown] == whole
    code_rows = [row for row in blocks.rows if row.block.kind == "code"]
    assert len(code_rows) == 2 and code_rows[1].chunks is not None
    assert len(code_rows[1].chunks.chunks) == 4
    assert code_rows[1].chunks.chunks == whole[-2].chunks(model.theme)
    assert changes == [], "finishing the reply redrew blocks that were already right"


def test_five_thousand_messages_make_only_the_visible_delegates(view: ConversationView, qtbot: QtBot) -> None:
    messages = conversation(5000)
    view.show_conversation("long", messages)
    qtbot.waitUntil(lambda: bool(delegates(view)) and view.list_item().property("atYEnd"), timeout=5000)
    made = delegates(view)
    assert view.list_item().property("count") == 5000
    assert len(made) < 40, f"{len(made)} delegates for a 700-pixel view"
    assert made[-1].property("id") == "m4999"
    built = sum(entry.blocks is not None for entry in view.model.entries)
    assert built < 60, f"{built} messages rendered for a 700-pixel view"


def test_opening_a_conversation_renders_its_end_only(view: ConversationView, qtbot: QtBot) -> None:
    # A list reset starts at the top: the first screenful would be rendered for nothing before the move to the end.
    for thread_id in ("first", "second"):  # the second open replaces cards already on screen
        view.show_conversation(thread_id, conversation(1000))
        qtbot.waitUntil(lambda: bool(delegates(view)) and view.list_item().property("atYEnd"), timeout=5000)
        assert delegates(view)[-1].property("id") == "m999"
        rendered = [i for i, entry in enumerate(view.model.entries) if entry.blocks is not None]
        assert rendered and min(rendered) > 900, f"messages {rendered[:5]}… were rendered, not only the newest"


def test_cards_are_in_the_conversation_order(view: ConversationView, qtbot: QtBot) -> None:
    messages = conversation(30)
    view.show_conversation("t", messages)
    view.append_message(Message("q", "user", "One more question"))
    view.begin_reply()
    view.append_tokens("The answer is **42**.")
    qtbot.waitUntil(lambda: view.model.entries[-1].text == "The answer is **42**.", timeout=2000)
    view.finish_reply(Message("a", "assistant", "The answer is **42**."))
    qtbot.waitUntil(lambda: bool(delegates(view)) and delegates(view)[-1].property("id") == "a", timeout=2000)
    made = delegates(view)
    ids = [item.property("id") for item in made]
    order = [m.id for m in messages] + ["q", "a"]
    start = order.index(ids[0])
    assert ids == order[start : start + len(ids)], "the cards on screen are not in the conversation's order"
    assert len(ids) >= 3
    tops = [item.y() for item in made]
    assert all(a + item.height() <= b for a, b, item in zip(tops, tops[1:], made, strict=False)), "cards overlap"


def test_toolbar_copy_copies_the_message_and_says_so(view: ConversationView, qtbot: QtBot) -> None:
    text = "Copy me: **exactly** this,\nwith its second line."
    view.show_conversation("t", [*conversation(3), Message("last", "assistant", text)])
    qtbot.waitUntil(lambda: bool(delegates(view)) and delegates(view)[-1].property("id") == "last", timeout=2000)
    QGuiApplication.clipboard().setText("untouched")
    copied: list[str] = []
    view.copied.connect(copied.append)
    row = delegates(view)[-1]  # kept: shiboken invalidates the wrappers found through a wrapper that goes away
    card = row.findChild(QQuickItem, "card")
    assert card is not None
    assert card.findChild(QQuickItem, "copyButton") is None, "the toolbar exists before hover or focus"
    centre = card.mapToScene(QPointF(card.width() / 2, card.height() / 2)).toPoint()
    QTest.mouseMove(view.surface, centre)
    qtbot.waitUntil(lambda: card.findChild(QQuickItem, "copyButton") is not None, timeout=2000)
    button = card.findChild(QQuickItem, "copyButton")
    assert button.property("text") == "Copy"
    target = button.mapToScene(QPointF(button.width() / 2, button.height() / 2)).toPoint()
    QTest.mouseClick(view.surface, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(target))
    qtbot.waitUntil(lambda: QGuiApplication.clipboard().text() == text, timeout=2000)
    assert copied == ["the message"]
    assert button.property("text") == "Copied ✓"


def test_keyboard_reaches_the_toolbar_and_copies(view: ConversationView, qtbot: QtBot) -> None:
    """Tab goes to a card, which shows its toolbar; Tab again reaches its buttons (the toolbar stays); Space on Copy
    copies the message."""
    messages = conversation(4)
    view.show_conversation("t", messages)
    qtbot.waitUntil(lambda: len(delegates(view)) == 4, timeout=2000)
    QGuiApplication.clipboard().setText("untouched")
    view.surface.setFocus()
    window = view.quick_window()

    def focused_message() -> str | None:
        item = window.activeFocusItem()
        while item is not None and item.objectName() != "message":
            item = item.parentItem()
        return None if item is None else item.property("id")

    for _ in range(2):  # the list, then the first card
        QTest.keyClick(view.surface, Qt.Key.Key_Tab)
    qtbot.waitUntil(lambda: focused_message() == "m0", timeout=2000)
    row = delegates(view)[0]
    card = row.findChild(QQuickItem, "card")
    qtbot.waitUntil(lambda: card.findChild(QQuickItem, "copyButton") is not None, timeout=2000)
    QTest.keyClick(view.surface, Qt.Key.Key_Tab)
    qtbot.waitUntil(lambda: window.activeFocusItem().objectName() == "copyButton", timeout=2000)
    assert focused_message() == "m0"
    assert card.findChild(QQuickItem, "copyButton") is not None, "the toolbar went away when its button took focus"
    QTest.keyClick(view.surface, Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: QGuiApplication.clipboard().text() == messages[0].text, timeout=2000)
    assert window.activeFocusItem().property("text") == "Copied ✓"


def test_model_rows_answer_every_role() -> None:
    model = MessageListModel()
    model.reset([])
    model.finish_reply(Message("m0", "user", "hello"))
    for name, role in model.ROLE.items():
        if name != "blocks":
            assert model.data(model.index(0), role) is not None, name
    assert model.rowCount(model.index(0)) == 0 and model.rowCount(QModelIndex()) == 1
