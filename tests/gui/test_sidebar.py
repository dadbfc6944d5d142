"""The conversation list on its own (gui/sidebar.py), and the window's keyboard around it: date groups, titles that
end in an ellipsis, the empty state under the search box, a right click that leaves the open conversation marked,
Down/Up/Esc between the search box and the results, Ctrl+Tab/Ctrl+PgUp/PgDn between conversations, Ctrl+B."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from gui.app import configure
from gui.sidebar import PINNED_ROLE, THREAD_ROLE, Sidebar, group_of
from storage.conversations import Conversation
from tests.support.app import cairn_factory, send_and_wait, until, window_of
from tests.support.model_server import ModelServer

LONG_TITLE = "A very long title that certainly does not fit into the sidebar, however wide the window is made"


@pytest.fixture(scope="module", autouse=True)
def _styled(qapp: QApplication) -> Iterator[None]:
    sheet = qapp.styleSheet()
    configure(qapp)  # the app's own style sheet: its padding is part of what made rows too wide
    yield
    qapp.setStyleSheet(sheet)


@pytest.fixture
def sidebar(qtbot: Any) -> Sidebar:
    widget = Sidebar()
    qtbot.addWidget(widget)
    widget.resize(260, 500)
    widget.show()
    return widget


def ago(days: float) -> float:
    return time.time() - days * 86_400


def test_date_groups() -> None:
    today = date(2026, 12, 6)

    def at(day: date, hour: int = 12) -> float:
        return datetime(day.year, day.month, day.day, hour).timestamp()

    assert group_of(at(today, 0), today) == "Today"
    assert group_of(at(today + timedelta(days=3)), today) == "Today"  # a clock that ran ahead
    assert group_of(at(today - timedelta(days=1), 23), today) == "Yesterday"
    assert group_of(at(today - timedelta(days=6)), today) == "Previous 7 days"
    assert group_of(at(today - timedelta(days=7)), today) == "Previous 30 days"
    assert group_of(at(today - timedelta(days=29)), today) == "Previous 30 days"
    assert group_of(at(date(2026, 3, 2)), today) == datetime(2026, 3, 2).strftime("%B")
    assert group_of(at(date(2024, 3, 2)), today) == "2024"
    assert group_of(0.0, today) == "Older"


def test_conversations_are_grouped_by_date_under_the_pinned_ones(sidebar: Sidebar) -> None:
    sidebar.set_conversations(
        [
            Conversation("pinned", "Pinned one", updated=ago(40), pinned=True),
            Conversation("now", "Just now", updated=ago(0)),
            Conversation("now-2", "Earlier today", updated=ago(0) - 1),
            Conversation("week", "Some days ago", updated=ago(3)),
            Conversation("old", "Long ago", updated=datetime(2020, 5, 1).timestamp()),
        ]
    )
    assert sidebar.headers()[0] == "Pinned" and sidebar.headers()[-1] == "2020"
    assert "Today" in sidebar.headers()
    assert sidebar.thread_ids() == ["pinned", "now", "now-2", "week", "old"]
    # A refresh with the same rows in the same groups keeps the items (nothing rebuilt) ...
    item = sidebar.item_for("week")
    sidebar.set_conversations(
        [
            Conversation("pinned", "Pinned one", updated=ago(40), pinned=True),
            Conversation("now", "Just now", updated=ago(0)),
            Conversation("now-2", "Earlier today", updated=ago(0) - 1),
            Conversation("week", "Renamed", updated=ago(3)),
            Conversation("old", "Long ago", updated=datetime(2020, 5, 1).timestamp()),
        ]
    )
    assert sidebar.item_for("week") is item and item.text() == "Renamed"
    # ... and a conversation moving to another group moves under its heading.
    sidebar.set_conversations([Conversation("week", "Renamed", updated=ago(0)), Conversation("now", "Just now")])
    assert sidebar.headers() == ["Today", "Older"]


def shown(sidebar: Sidebar) -> list[tuple[str, str, bool, str]]:
    """Every item of the list as drawn: text, thread, pinned, tooltip (headers have no thread)."""
    items = (sidebar.list.item(i) for i in range(sidebar.list.count()))
    return [(i.text(), i.data(THREAD_ROLE) or "", bool(i.data(PINNED_ROLE)), i.toolTip()) for i in items]


def test_a_reply_moves_its_conversation_to_the_top_without_making_the_list_again(qtbot: Any, sidebar: Sidebar) -> None:
    """The conversation of a reply goes to the top of 1,000 (from another date group): the other 999 items are the
    same objects, the open conversation stays marked, and the list is what a fresh one would show."""
    conversations = [Conversation(f"c{i}", f"Conversation {i}", updated=ago(i / 20)) for i in range(1000)]
    sidebar.set_conversations(conversations)
    sidebar.select("c500")
    before = {c.thread_id: sidebar.item_for(c.thread_id) for c in conversations}
    moved = replace(conversations[500], updated=time.time())
    after = [moved, *conversations[:500], *conversations[501:]]
    sidebar.set_conversations(after)
    assert sidebar.thread_ids()[:2] == ["c500", "c0"]
    assert all(sidebar.item_for(c.thread_id) is before[c.thread_id] for c in after if c.thread_id != "c500")
    assert sidebar.list.currentItem() is sidebar.item_for("c500") and sidebar.item_for("c500").isSelected()
    fresh = Sidebar()
    qtbot.addWidget(fresh)
    fresh.set_conversations(after)
    assert shown(sidebar) == shown(fresh)


def test_any_change_of_the_list_shows_what_a_fresh_list_shows(qtbot: Any, sidebar: Sidebar) -> None:
    """Random refreshes (conversations added, deleted, renamed, pinned, moved across date groups, reordered): the
    list changed in place always shows exactly what a list made from nothing shows."""
    chooser = random.Random(12)
    days = [0, 0.5, 1.5, 3, 10, 40, 400]
    current = [Conversation(f"c{i}", f"T{i}", updated=ago(chooser.choice(days))) for i in range(40)]
    fresh = Sidebar()
    qtbot.addWidget(fresh)
    for _ in range(150):
        current = list(current)
        for _change in range(chooser.randint(1, 4)):
            what = chooser.random()
            if what < 0.2 and current:
                current.pop(chooser.randrange(len(current)))
            elif what < 0.4:
                current.append(Conversation(f"n{chooser.randrange(10**6)}", "New", updated=ago(chooser.choice(days))))
            elif current:
                at = chooser.randrange(len(current))
                c = current[at]
                current[at] = replace(
                    c,
                    title=chooser.choice([c.title, f"R{chooser.randrange(99)}"]),
                    pinned=chooser.random() < 0.1,
                    updated=ago(chooser.choice(days)),
                )
        current.sort(key=lambda c: (not c.pinned, -c.updated))
        sidebar.set_conversations(current)
        fresh.set_conversations([])
        fresh.set_conversations(current)
        assert shown(sidebar) == shown(fresh)


def test_long_titles_end_in_an_ellipsis_with_no_horizontal_scrollbar(sidebar: Sidebar) -> None:
    sidebar.set_conversations([Conversation(f"t{i}", f"{LONG_TITLE} {i}", updated=ago(i)) for i in range(100)])
    QApplication.processEvents()
    rows = sidebar.list
    assert rows.verticalScrollBar().isVisible()  # the case where rows used to grow wider than the list
    assert rows.horizontalScrollBar().maximum() == 0
    item = sidebar.item_for("t1")
    assert item is not None
    assert rows.visualItemRect(item).width() <= rows.viewport().width()
    assert rows.textElideMode() == Qt.TextElideMode.ElideRight


def test_the_empty_state_sits_under_the_search_box(sidebar: Sidebar) -> None:
    sidebar.set_conversations([])
    QApplication.processEvents()
    label = sidebar.empty_label
    assert label.isVisible() and label.text() == "No conversations yet."
    assert label.geometry().top() - sidebar.search.geometry().bottom() < 40
    sidebar.set_conversations([], searching=True)
    assert label.text() == "No conversation matches."


def test_a_right_click_leaves_the_open_conversation_marked(qtbot: Any, sidebar: Sidebar) -> None:
    sidebar.set_conversations([Conversation("a", "First", updated=ago(0)), Conversation("b", "Second", updated=ago(0))])
    sidebar.select("a")
    other = sidebar.item_for("b")
    assert other is not None
    at = QPointF(sidebar.list.visualItemRect(other).center())
    menus: list[Any] = []
    sidebar.list.customContextMenuRequested.connect(menus.append)
    for kind in (QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonRelease):
        press = QMouseEvent(
            kind,
            at,
            QPointF(sidebar.list.viewport().mapToGlobal(at)),
            Qt.MouseButton.RightButton,
            Qt.MouseButton.RightButton if kind == QEvent.Type.MouseButtonPress else Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
        )
        QApplication.sendEvent(sidebar.list.viewport(), press)
    assert sidebar.current_thread() == "a"
    assert [i.data(Qt.ItemDataRole.UserRole) for i in sidebar.list.selectedItems()] == ["a"]
    menu = sidebar.context_menu("b")  # the menu is the right-clicked row's
    assert menu.actions()[1].text() == "Pin to top"


def test_down_enters_the_results_up_comes_back_and_esc_clears(qtbot: Any, sidebar: Sidebar) -> None:
    sidebar.set_conversations([Conversation("a", "First", updated=ago(0)), Conversation("b", "Second", updated=ago(1))])
    opened: list[str] = []
    sidebar.conversationActivated.connect(opened.append)
    sidebar.search.setFocus()
    qtbot.keyClicks(sidebar.search, "Fir")
    qtbot.keyClick(sidebar.search, Qt.Key.Key_Down)
    assert sidebar.list.hasFocus() and sidebar.current_thread() == "a"
    qtbot.keyClick(sidebar.list, Qt.Key.Key_Down)
    assert sidebar.current_thread() == "b"
    qtbot.keyClick(sidebar.list, Qt.Key.Key_Return)
    assert opened == ["b"]
    qtbot.keyClick(sidebar.list, Qt.Key.Key_Up)
    qtbot.keyClick(sidebar.list, Qt.Key.Key_Up)  # from the first row: back to the search box
    assert sidebar.search.hasFocus()
    qtbot.keyClick(sidebar.search, Qt.Key.Key_Escape)
    assert sidebar.search.text() == ""


async def test_the_keyboard_switches_conversations_and_ctrl_b_hides_the_list(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    async with cairn_factory(tmp_path, server)() as app:
        window = window_of(app)
        window.activateWindow()
        await until(lambda: QApplication.activeWindow() is window, "the window to be active")
        first = await send_and_wait(qtbot, window, "first conversation")
        window.new_chat()
        second = await send_and_wait(qtbot, window, "second conversation")
        await until(lambda: window.sidebar.thread_ids() == [second, first], "both listed")
        edit = window.composer.edit
        ctrl = Qt.KeyboardModifier.ControlModifier

        qtbot.keyClick(edit, Qt.Key.Key_PageDown, ctrl)
        await until(lambda: window.current == first, "Ctrl+PgDown opens the next conversation")
        qtbot.keyClick(edit, Qt.Key.Key_PageUp, ctrl)
        await until(lambda: window.current == second, "Ctrl+PgUp opens the previous one")
        qtbot.keyClick(edit, Qt.Key.Key_Tab, ctrl)
        await until(lambda: window.current == first, "Ctrl+Tab opens the next one")
        qtbot.keyClick(edit, Qt.Key.Key_Backtab, ctrl | Qt.KeyboardModifier.ShiftModifier)
        await until(lambda: window.current == second, "Ctrl+Shift+Tab opens the previous one")

        qtbot.keyClick(edit, Qt.Key.Key_B, ctrl)
        assert window.sidebar.isHidden() and not window.sidebar_action.isChecked()
        assert edit.toPlainText() == ""  # the shortcut typed nothing
        window.save_state()
        qtbot.keyClick(edit, Qt.Key.Key_K, ctrl)  # searching brings the list back
        assert not window.sidebar.isHidden() and window.sidebar.search.hasFocus()

