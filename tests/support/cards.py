"""The conversation (Qt Quick message cards) in tests: its delegates and parts found by ``objectName``, the text they
show as a user reads it, and the mouse on them (buttons, links) as a user moves it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from PySide6.QtCore import Q_ARG, Q_RETURN_ARG, QEvent, QMetaObject, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QTextDocument
from PySide6.QtGui import Qt as GuiQt
from PySide6.QtQml import QQmlEngine, QQmlExpression
from PySide6.QtQuick import QQuickItem
from PySide6.QtQuickWidgets import QQuickWidget
from PySide6.QtWidgets import QApplication, QWidget

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


PLAIN, RICH, AUTO, MARKDOWN, STYLED = 0, 1, 2, 3, 4
"""QML's Text.textFormat values."""


def is_text(item: QQuickItem) -> bool:
    return item.metaObject().className().startswith(("QQuickText", "QQuickIconLabel"))


def text_format(item: QQuickItem) -> int:
    """``item.textFormat`` (an enum PySide cannot convert: read as a number through QML)."""
    if not item.metaObject().className().startswith("QQuickText"):
        return PLAIN  # a button's label
    context = QQmlEngine.contextForObject(item)
    value, failed = QQmlExpression(context, item, "Number(textFormat)").evaluate()
    assert not failed, "textFormat unreadable"
    return int(value)


def plain_text(item: QQuickItem) -> str:
    """What a text item shows, as plain text (rich and styled text are HTML in its ``text``)."""
    text = str(item.property("text") or "")
    form = text_format(item)
    if form in (RICH, STYLED) or (form == AUTO and GuiQt.mightBeRichText(text)):
        document = QTextDocument()
        document.setHtml(text)
        return document.toPlainText()
    return text


def in_order(item: QQuickItem) -> list[QQuickItem]:
    """``item`` and every item under it, each before its children, children in their order (in a Column or a Row,
    top to bottom and left to right)."""
    found = [item]
    for child in item.childItems():
        found.extend(in_order(child))
    return found


ICON_ONLY = 0
"""AbstractButton.IconOnly: a button showing its icon, not its text (which stays its name for screen readers)."""


def written(item: QQuickItem) -> bool:
    """A visible text item that draws its text: not the label of an icon-only button."""
    if not (is_text(item) and item.isVisible()):
        return False
    if item.metaObject().className().startswith("QQuickIconLabel"):
        context = QQmlEngine.contextForObject(item)
        value, failed = QQmlExpression(context, item, "Number(display)").evaluate()
        assert not failed, "display unreadable"
        return int(value) != ICON_ONLY
    return True


def texts(item: QQuickItem) -> list[str]:
    """The text of every visible text item under ``item`` (buttons' written labels included), in order."""
    return [plain_text(i) for i in in_order(item) if written(i) and plain_text(i)]


def words(row: QQuickItem) -> str:
    """The text of every visible text item of a card, one a line."""
    return "\n".join(texts(row))


def scene_part(view: QuickChatView, name: str) -> QQuickItem | None:
    """An item of the scene outside the cards: ``errorBlock``, ``errorText``, ``retryButton``, ``note``..."""
    return view.quick.rootObject().findChild(QQuickItem, name)


def error_shown(view: QuickChatView) -> str:
    """The error block under the last message as shown ("" when there is none)."""
    block = scene_part(view, "errorBlock")
    return "\n".join(texts(block)) if block is not None and block.isVisible() else ""


def shown_text(view: QuickChatView) -> str:
    """What a user reads in the conversation, top to bottom: the cards that are made, the error block, the note."""
    parts = ["\n".join(texts(row)) for row in rows(view)]
    parts.append(error_shown(view))
    note = scene_part(view, "note")
    if note is not None and note.isVisible():
        parts.append(plain_text(note))
    return "\n".join(p for p in parts if p)


def retry_button(view: QuickChatView) -> QQuickItem:
    button = scene_part(view, "retryButton")
    assert button is not None and button.isVisible(), error_shown(view)
    return button


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


async def click(view: QuickChatView, item: QQuickItem, at: QPointF | None = None) -> None:
    """A left click on ``item`` where it is drawn (at its centre, or at ``at`` in its coordinates): a frame is drawn
    first, so an item that has just appeared (or moved, the list scrolling to the newest) is clicked where it is,
    not where it was laid out before."""
    scene = view.surface.quickWindow() if isinstance(view.surface, QQuickWidget) else None
    if scene is not None:
        scene.update()
        await wait_signal(scene.afterRendering, 5)
    pos = centre(item) if at is None else item.mapToScene(at).toPoint()
    click_at(view.surface, pos)


def link_at(item: QQuickItem, x: float, y: float) -> str:
    return str(QMetaObject.invokeMethod(item, "linkAt", Q_RETURN_ARG("QString"), Q_ARG("qreal", x), Q_ARG("qreal", y)))


def find_link(row: QQuickItem, href: str) -> tuple[QQuickItem, QPointF]:
    """The text item of a card that shows a link to ``href``, and a point on the link (found with ``Text.linkAt``,
    where the user's pointer would turn into a hand)."""
    for item in in_order(row):
        if not (item.metaObject().className().startswith("QQuickText") and item.isVisible()):
            continue
        if "href" not in str(item.property("text")):
            continue
        for y in range(1, int(item.height()), 4):
            for x in range(1, int(item.width()), 3):
                if link_at(item, x, y) == href:
                    return item, QPointF(x, y)
    raise AssertionError(f"no link to {href} in the card: {words(row)!r}")


async def click_link(view: QuickChatView, row: QQuickItem, href: str) -> None:
    """A click on the link to ``href`` in a card, where it is drawn."""
    await until(lambda: not view.list_item().property("moving"), "the list to settle")
    item, point = find_link(row, href)
    await click(view, item, point)


async def toolbar_button(view: QuickChatView, row: QQuickItem, name: str) -> QQuickItem:
    """Hover the card until its toolbar is made; its button ``name``."""
    body = part(row, "card")
    assert body is not None
    hover(view, body)
    await until(lambda: part(row, name) is not None, f"the toolbar's {name}")
    button = part(row, name)
    assert button is not None
    return button


@dataclass(frozen=True)
class Message:
    """A message as the view takes it (``MessageLike``), without what the chat service adds."""

    id: str
    role: str
    text: str
    stopped: bool = False


def conversation(count: int) -> list[Message]:
    """``count`` messages, the user's and the replies' in turn, of lengths that wrap differently."""
    return [
        Message(f"m{i}", "user" if i % 2 == 0 else "assistant", f"Message {i}: " + "words to wrap " * (i % 7 + 1))
        for i in range(count)
    ]


V = TypeVar("V", bound=QWidget)


def on_screen(qtbot: Any, view: V, size: tuple[int, int] = (900, 700)) -> V:
    """``view`` shown in a window of ``size``, exposed (its scene renders), and closed with the test."""
    qtbot.addWidget(view)
    view.resize(*size)
    view.show()
    qtbot.waitExposed(view)
    return view
