"""The conversation as a Qt Quick scene in the widget window: ``ConversationView``, a QWidget holding
``qml/Conversation.qml`` over a ``MessageListModel``.

Two ways to put Qt Quick in a widget window, both kept so the benchmark can compare them (``embed``):

- ``"widget"``: ``QQuickWidget``. The scene renders into a texture on the GUI thread and is composed with the
  widgets: it behaves like any widget (stacking, focus, resizing, grabbing), at the cost of the render on the
  loop's thread and a copy per frame.
- ``"window"``: a ``QQuickView`` in ``QWidget.createWindowContainer``. A native child window; on a desktop with a
  GPU the threaded render loop renders it off the loop's thread. It is always on top of sibling widgets and
  takes the keyboard focus in its own way.

Under ``QT_QPA_PLATFORM=offscreen`` (tests, benchmarks) there is no OpenGL, and Qt Quick falls back to its software
renderer by itself (``QSGRendererInterface.GraphicsApi.Software``), on the GUI thread whatever the embedding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Property, QMetaObject, QObject, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices, QFontDatabase, QGuiApplication, QPalette
from PySide6.QtQuick import QQuickItem, QQuickView, QQuickWindow
from PySide6.QtQuickWidgets import QQuickWidget
from PySide6.QtWidgets import QVBoxLayout, QWidget

from gui.conversation.model import Entry, MessageLike, MessageListModel
from gui.markdown import Theme, code_background

QML = Path(__file__).resolve().parent / "qml" / "Conversation.qml"
EXTERNAL_SCHEMES = ("http:", "https:", "mailto:")


def read_theme(palette: QPalette) -> Theme:
    return Theme(
        dark=palette.color(QPalette.ColorRole.Base).lightness() < 128,
        muted=palette.color(QPalette.ColorRole.PlaceholderText).name(),
        link=palette.color(QPalette.ColorRole.Link).name(),
        border=palette.color(QPalette.ColorRole.Mid).name(),
    )


class Bridge(QObject):
    """What QML calls (the actions) and reads (what only Python knows: the fixed font, the code background)."""

    themeChanged = Signal()

    def __init__(self, view: ConversationView) -> None:
        super().__init__(view)
        self._view = view

    @Slot(str)
    def copyMessage(self, message_id: str) -> None:
        row = self._view.model.row_of(message_id)
        if row >= 0:
            QGuiApplication.clipboard().setText(self._view.model.entries[row].text)
            self._view.copied.emit("the message")

    @Slot(str, int)
    def copyCode(self, message_id: str, block: int) -> None:
        row = self._view.model.row_of(message_id)
        blocks = self._view.model.entries[row].blocks if row >= 0 else None
        if blocks is not None and blocks.code(block):
            QGuiApplication.clipboard().setText(blocks.code(block))
            self._view.copied.emit("the code")

    @Slot(str)
    def edit(self, message_id: str) -> None:
        row = self._view.model.row_of(message_id)
        if row >= 0:
            self._view.editRequested.emit(message_id, self._view.model.entries[row].text)

    @Slot(str)
    def regenerate(self, _message_id: str) -> None:
        self._view.regenerateRequested.emit()

    @Slot(str, int)
    def switchBranch(self, message_id: str, step: int) -> None:
        self._view.branchRequested.emit(message_id, step)

    @Slot(str)
    def openLink(self, link: str) -> None:
        if link.lower().startswith(EXTERNAL_SCHEMES):  # only on an explicit click, and never inside the app
            QDesktopServices.openUrl(QUrl(link))

    def _fixed_font(self) -> str:
        return QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()

    def _code_background(self) -> str:
        return code_background(self._view.model.theme.code_style)

    def _selectable_text(self) -> bool:
        return self._view.selectable

    def _link_color(self) -> str:
        return self._view.model.theme.link

    fixedFont = Property(str, _fixed_font, notify=themeChanged)
    linkColor = Property(str, _link_color, notify=themeChanged)
    selectableText = Property(bool, _selectable_text, constant=True)
    codeBackground = Property(str, _code_background, notify=themeChanged)


class ConversationView(QWidget):
    """Shows one conversation in Qt Quick; the subset of ``gui.chat_view.ChatView``'s API the prototype needs."""

    editRequested = Signal(str, str)  # message id, its text
    regenerateRequested = Signal()
    branchRequested = Signal(str, int)  # message id, -1 or +1
    copied = Signal(str)

    def __init__(self, parent: QWidget | None = None, *, embed: str = "widget", selectable: bool = False) -> None:
        """``selectable``: text blocks are read-only TextEdits the mouse can select in, not Text items."""
        super().__init__(parent)
        self.setObjectName("conversationView")
        self.embed = embed
        self.selectable = selectable
        self.thread_id: str | None = None
        self.last_open_ms = 0.0
        self.model = MessageListModel(self)
        self.model.theme = read_theme(self.palette())
        self.bridge = Bridge(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        if embed == "widget":
            self.quick = QQuickWidget(self)
            self.quick.setResizeMode(QQuickWidget.ResizeMode.SizeRootObjectToView)
            context = self.quick.rootContext()
            context.setContextProperty("messages", self.model)
            context.setContextProperty("chat", self.bridge)
            self.quick.setSource(QUrl.fromLocalFile(str(QML)))
            errors = self.quick.errors()
            self.surface: QWidget = self.quick
            self._window: QQuickWindow = self.quick.quickWindow()
            self._root = self.quick.rootObject()
        elif embed == "window":
            self.view = QQuickView()
            self.view.setResizeMode(QQuickView.ResizeMode.SizeRootObjectToView)
            context = self.view.rootContext()
            context.setContextProperty("messages", self.model)
            context.setContextProperty("chat", self.bridge)
            self.view.setSource(QUrl.fromLocalFile(str(QML)))
            errors = self.view.errors()
            self.surface = QWidget.createWindowContainer(self.view, self)
            self._window = self.view
            self._root = self.view.rootObject()
        else:
            raise ValueError(f"embed must be 'widget' or 'window', not {embed!r}")
        if errors or self._root is None:
            raise RuntimeError("Conversation.qml did not load: " + "; ".join(e.toString() for e in errors))
        self.surface.setAccessibleName("Conversation")
        layout.addWidget(self.surface)

    # --- for tests and benchmarks ---------------------------------------------------------------------------
    def quick_window(self) -> QQuickWindow:
        return self._window

    def list_item(self) -> QQuickItem:
        found = self._root.findChild(QQuickItem, "messageList")
        assert found is not None
        return found

    # --- what the window calls ------------------------------------------------------------------------------
    def messages(self) -> list[Entry]:
        return [e for e in self.model.entries if not e.streaming]

    @property
    def streaming(self) -> bool:
        return self.model.streaming

    @property
    def flush_count(self) -> int:
        return self.model.flush_count

    def stream_text(self) -> str:
        return self.model.stream_text()

    def show_conversation(self, thread_id: str, messages: Sequence[MessageLike]) -> float:
        start = time.perf_counter()
        self.thread_id = thread_id
        self.model.reset([Entry(m.id, m.role, m.text, m.stopped, _timestamp(m)) for m in messages])
        self.scroll_to_end()
        self.last_open_ms = (time.perf_counter() - start) * 1000
        return self.last_open_ms

    def append_message(self, message: MessageLike) -> None:
        self.model.append(Entry(message.id, message.role, message.text, message.stopped, _timestamp(message)))
        self.scroll_to_end()

    def scroll_to_end(self) -> None:
        """Show the end now, and follow it: the first frame after an open shows the newest messages, and the
        delegates of the oldest are never made (the QML's own follow waits for the next turn of the loop)."""
        items = self.list_item()
        items.setProperty("currentIndex", -1)  # a current item is kept made wherever it is: message 0, far above
        items.setProperty("follow", True)
        QMetaObject.invokeMethod(items, "positionViewAtEnd")

    def remove_messages_from(self, index: int) -> None:
        self.model.remove_from(index)

    def begin_reply(self, text: str = "") -> None:
        self.model.begin_reply(text)

    def append_tokens(self, text: str) -> None:
        self.model.append_tokens(text)

    def finish_reply(self, message: MessageLike) -> None:
        self.model.finish_reply(message)

    def discard_reply(self) -> str:
        return self.model.discard_reply()

    def last_reply_text(self) -> str | None:
        return next((e.text for e in reversed(self.model.entries) if e.role == "assistant"), None)

    def closeEvent(self, event: object) -> None:  # the native QQuickView is not a child widget: close it too
        if self.embed == "window":
            self.view.close()
        super().closeEvent(event)  # type: ignore[arg-type]


def _timestamp(message: MessageLike) -> str:
    return str(getattr(message, "timestamp", "") or "")
