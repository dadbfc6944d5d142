"""Reading a conversation in the cards (gui/conversation/view.py ``QuickChatView``): text the mouse can select and
copy, the keyboard's way from card to card, the toolbar's icons, and staying put while scrolled up during a reply
(with "Newest" to come back). A real QML scene in a real window, offscreen; real mouse and key events.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QGuiApplication, QMouseEvent
from PySide6.QtQuick import QQuickItem
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from gui.conversation.view import QuickChatView
from tests.support.cards import Message, conversation, descendants, on_screen, part, rows


@pytest.fixture
def view(qtbot: QtBot) -> Iterator[QuickChatView]:
    shown = on_screen(qtbot, QuickChatView())
    shown.activateWindow()
    yield shown


def focused_message(view: QuickChatView) -> str | None:
    item = view.quick_window().activeFocusItem()
    while item is not None and item.objectName() != "message":
        item = item.parentItem()
    return None if item is None else item.property("id")


def scene_point(item: QQuickItem, x: float, y: float) -> QPoint:
    return item.mapToScene(QPointF(x, y)).toPoint()


def drag(view: QuickChatView, start: QPoint, end: QPoint) -> None:
    """Press the left button at ``start``, move to ``end`` in steps with it held, release: a selection gesture."""
    left, none = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier

    def send(kind: QEvent.Type, at: QPoint, buttons: Qt.MouseButton) -> None:
        local = QPointF(at)
        event = QMouseEvent(kind, local, QPointF(view.surface.mapToGlobal(at)), left, buttons, none)
        QApplication.sendEvent(view.surface, event)

    send(QEvent.Type.MouseButtonPress, start, left)
    for step in range(1, 11):
        send(QEvent.Type.MouseMove, start + (end - start) * step / 10, left)
    send(QEvent.Type.MouseButtonRelease, end, Qt.MouseButton.NoButton)


def key(view: QuickChatView, which: Qt.Key, modifier: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
    QTest.keyClick(view.surface, which, modifier)


def test_a_finished_message_can_be_selected_with_the_mouse_and_the_selection_copied(
    view: QuickChatView, qtbot: QtBot
) -> None:
    text = "First paragraph with some words in it.\n\nSecond paragraph, which is not selected."
    view.show_conversation("t", [Message("q", "user", "Question?"), Message("a", "assistant", text)])
    qtbot.waitUntil(lambda: any(r.property("id") == "a" for r in rows(view)), timeout=3000)
    row = next(r for r in rows(view) if r.property("id") == "a")
    qtbot.waitUntil(lambda: part(row, "selectableText") is not None, timeout=3000)
    first = part(row, "selectableText")
    assert first is not None
    QGuiApplication.clipboard().setText("untouched")

    middle = 8  # on the first line: a paragraph has its bottom margin below
    drag(view, scene_point(first, 1, middle), scene_point(first, first.width() - 1, middle))
    qtbot.waitUntil(lambda: bool(first.property("selectedText")), timeout=3000)
    selected = str(first.property("selectedText"))
    assert selected.startswith("First paragraph") and "Second" not in selected

    key(view, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    copied = selected.replace("\u2029", "\n")  # Qt's paragraph separator is a newline on the clipboard
    qtbot.waitUntil(lambda: QGuiApplication.clipboard().text() == copied, timeout=3000)


def test_a_streaming_reply_is_selectable_up_to_its_growing_end_and_whole_once_finished(
    view: QuickChatView, qtbot: QtBot
) -> None:
    """What a streaming reply shows for good (its paragraphs before the last cut) can be selected at once; the
    paragraph still growing is a Text (a TextEdit lays out far slower) until the reply is finished."""
    view.show_conversation("t", [Message("q", "user", "Question?")])
    view.begin_reply()
    view.append_tokens("A first paragraph, written for good.\n\nGrowing words of a reply\nstill")  # a cut: a line ends

    def selectable(row: QQuickItem) -> list[str]:
        return [str(i.property("text")) for i in descendants(row) if i.objectName() == "selectableText"]

    def drawn(row: QQuickItem) -> str:
        return "".join(str(i.property("text")) for i in descendants(row))

    qtbot.waitUntil(lambda: "Growing words" in drawn(rows(view)[-1]), timeout=3000)
    streaming = rows(view)[-1]
    assert streaming.property("streaming")
    qtbot.waitUntil(lambda: len(selectable(streaming)) == 1, timeout=3000)
    assert "first paragraph" in selectable(streaming)[0]
    assert "Growing" not in "".join(selectable(streaming)), "the growing paragraph is a TextEdit (slow to lay out)"

    text = "A first paragraph, written for good.\n\nGrowing words of a reply\nstill growing, finished."
    view.finish_reply(Message("a", "assistant", text))
    qtbot.waitUntil(lambda: rows(view)[-1].property("id") == "a" and len(selectable(rows(view)[-1])) == 2, timeout=3000)
    assert any("finished" in text for text in selectable(rows(view)[-1]))


def test_the_arrows_move_from_card_to_card_and_home_and_end_go_to_either_end(view: QuickChatView, qtbot: QtBot) -> None:
    view.show_conversation("t", conversation(4))
    qtbot.waitUntil(lambda: len(rows(view)) == 4, timeout=3000)
    view.surface.setFocus()
    for _ in range(2):  # the list, then the first card
        key(view, Qt.Key.Key_Tab)
    qtbot.waitUntil(lambda: focused_message(view) == "m0", timeout=3000)

    for pressed, expected in [
        (Qt.Key.Key_Down, "m1"),
        (Qt.Key.Key_Down, "m2"),
        (Qt.Key.Key_Up, "m1"),
        (Qt.Key.Key_End, "m3"),
        (Qt.Key.Key_Down, "m3"),  # the last card keeps the focus
        (Qt.Key.Key_Home, "m0"),
        (Qt.Key.Key_Up, "m0"),
    ]:
        key(view, pressed)
        qtbot.waitUntil(lambda expected=expected: focused_message(view) == expected, timeout=3000)
        row = next(r for r in rows(view) if r.property("id") == expected)
        assert part(row, "copyButton") is not None, "the focused card shows its toolbar"


def test_the_arrows_reach_a_card_off_screen_and_scroll_it_into_view(view: QuickChatView, qtbot: QtBot) -> None:
    view.show_conversation("t", conversation(60))
    items = view.list_item()
    qtbot.waitUntil(lambda: bool(items.property("atYEnd")), timeout=3000)
    view.surface.setFocus()
    for _ in range(2):
        key(view, Qt.Key.Key_Tab)
    qtbot.waitUntil(lambda: focused_message(view) is not None, timeout=3000)
    key(view, Qt.Key.Key_Home)
    qtbot.waitUntil(lambda: focused_message(view) == "m0", timeout=3000)
    row = next(r for r in rows(view) if r.property("id") == "m0")
    top = row.mapToItem(items, QPointF(0, 0)).y()
    assert 0 <= top < items.height(), "the first card has the focus but is not on screen"
    assert not items.property("follow"), "the view still follows the end while the user reads the start"


def test_the_toolbar_buttons_are_icons_with_their_shortcuts_in_the_tooltips(view: QuickChatView, qtbot: QtBot) -> None:
    view.show_conversation("t", [Message("q", "user", "Question?"), Message("a", "assistant", "Answer.")])
    qtbot.waitUntil(lambda: len(rows(view)) == 2, timeout=3000)
    view.set_busy(False)
    tips = {}
    for row, names in zip(rows(view), (("copyButton", "editButton"), ("copyButton", "regenerateButton")), strict=True):
        card = part(row, "card")
        assert card is not None
        QTest.mouseMove(view.surface, scene_point(card, card.width() / 2, card.height() / 2))
        qtbot.waitUntil(lambda row=row: part(row, "copyButton") is not None, timeout=3000)
        for name in names:
            button = part(row, name)
            assert button is not None and button.isVisible(), name
            images = [i for i in descendants(button) if i.metaObject().className().startswith("QQuickIconImage")]
            # Painted at a size: the SVG was found and read (a missing or unreadable file paints nothing).
            qtbot.waitUntil(lambda images=images: bool(images) and images[0].property("paintedWidth") > 0, timeout=3000)
            assert images[0].isVisible() and images[0].width() > 0, name
            tips[name] = str(button.property("tip"))
    assert "Ctrl+C" in tips["copyButton"]
    assert "(E)" in tips["editButton"] and "(R)" in tips["regenerateButton"]


def test_scrolled_up_during_a_reply_the_view_stays_put_until_newest_is_clicked(
    view: QuickChatView, qtbot: QtBot
) -> None:
    view.show_conversation("t", conversation(40))
    items = view.list_item()
    qtbot.waitUntil(lambda: bool(items.property("atYEnd")), timeout=3000)
    view.begin_reply()
    view.append_tokens("The first words. ")
    qtbot.waitUntil(lambda: bool(items.property("atYEnd")), timeout=3000)
    view.surface.setFocus()
    key(view, Qt.Key.Key_Tab)  # the list
    key(view, Qt.Key.Key_PageUp)
    qtbot.waitUntil(lambda: not items.property("follow"), timeout=3000)
    jump = next((i for i in descendants(view.quick_window().contentItem()) if i.objectName() == "jumpButton"), None)
    assert jump is not None
    qtbot.waitUntil(jump.isVisible, timeout=3000)
    where = items.property("contentY")
    for _ in range(5):
        view.append_tokens("More words arrive, line after line.\n\n")
    qtbot.waitUntil(lambda: view.model.entries[-1].text.count("line after line") == 5, timeout=3000)
    scene = view.quick_window()
    for _ in range(2):  # a following view moves on the turn of the loop after the growth: let frames pass
        with qtbot.waitSignal(scene.afterRendering, timeout=3000):
            scene.update()
    assert items.property("contentY") == where, "the view moved under a reader who scrolled up"

    centre = scene_point(jump, jump.width() / 2, jump.height() / 2)
    QTest.mouseClick(view.surface, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, centre)
    qtbot.waitUntil(lambda: bool(items.property("atYEnd")) and not jump.isVisible(), timeout=3000)
    view.append_tokens("And the newest words.\n\n" * 5)
    qtbot.waitUntil(lambda: view.model.entries[-1].text.endswith("newest words.\n\n"), timeout=3000)
    qtbot.waitUntil(lambda: bool(items.property("atYEnd")), timeout=3000)
