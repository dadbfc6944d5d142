"""The cards view (Qt Quick) in tests: its message delegates found by ``objectName``, and the mouse on them as a user
moves it."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtQuick import QQuickItem
from PySide6.QtQuickWidgets import QQuickWidget
from PySide6.QtWidgets import QApplication

from gui.conversation.view import QuickChatView
from tests.support.app import (
    click_at,
    until,
    window_of,
)
from tests.support.qt import wait_signal


def view_of(app: Any) -> QuickChatView:
    view = window_of(app).view
    assert isinstance(view, QuickChatView)
    return view


def rows(view: QuickChatView) -> list[QQuickItem]:
    """The message delegates that exist now, top to bottom."""
    content = view.list_item().property("contentItem")
    found = [item for item in content.childItems() if item.objectName() == "message"]
    return sorted(found, key=lambda item: item.y())


def row_of(view: QuickChatView, message_id: str) -> QQuickItem | None:
    return next((row for row in rows(view) if row.property("id") == message_id), None)


async def card(view: QuickChatView, message_id: str) -> QQuickItem:
    await until(lambda: row_of(view, message_id) is not None, f"the card of {message_id}")
    found = row_of(view, message_id)
    assert found is not None
    return found


def descendants(item: QQuickItem) -> list[QQuickItem]:
    """Every item under ``item`` in the scene (a Repeater's items are not its QObject children)."""
    found: list[QQuickItem] = []
    stack = list(item.childItems())
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(child.childItems())
    return found


def part(row: QQuickItem, name: str) -> QQuickItem | None:
    return next((item for item in descendants(row) if item.objectName() == name), None)


def shown(row: QQuickItem, name: str) -> bool:
    item = part(row, name)
    return item is not None and item.isVisible()


def words(row: QQuickItem) -> str:
    """The text of every visible text item of a card."""
    texts = [
        str(item.property("text"))
        for item in descendants(row)
        if item.metaObject().className().startswith("QQuickText") and item.isVisible()
    ]
    return "\n".join(texts)


def centre(item: QQuickItem) -> QPoint:
    return item.mapToScene(QPointF(item.width() / 2, item.height() / 2)).toPoint()


def hover(view: QuickChatView, item: QQuickItem) -> None:
    pos = QPointF(centre(item))
    event = QMouseEvent(
        QEvent.Type.MouseMove,
        pos,
        QPointF(view.surface.mapToGlobal(pos)),
        Qt.MouseButton.NoButton,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(view.surface, event)


async def click(view: QuickChatView, item: QQuickItem) -> None:
    """A left click on ``item`` where it is drawn: a frame is drawn first, so an item that has just appeared (or
    moved, the list scrolling to the newest) is clicked where it is, not where it was laid out before."""
    scene = view.surface.quickWindow() if isinstance(view.surface, QQuickWidget) else None
    if scene is not None:
        scene.update()
        await wait_signal(scene.afterRendering, 5)
    click_at(view.surface, centre(item))


async def toolbar_button(view: QuickChatView, row: QQuickItem, name: str) -> QQuickItem:
    """Hover the card until its toolbar is made; its button ``name``."""
    body = part(row, "card")
    assert body is not None
    hover(view, body)
    await until(lambda: part(row, name) is not None, f"the toolbar's {name}")
    button = part(row, name)
    assert button is not None
    return button
