"""The conversation as a Qt Quick scene in the widget window: ``ConversationView``, a QWidget holding
``qml/Conversation.qml`` over a ``MessageListModel``.

The scene is a ``QQuickWidget``: it behaves like any widget (stacking, focus, resizing, grabbing), rendered on
the loop's thread (docs/CHAT_VIEW_PROTOTYPE.md compared it with a ``QQuickView`` in a window container). It draws
with Qt Quick's software renderer (``use_software_renderer``). The window makes the scene after its first paint
(``defer_scene``).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Q_ARG, Property, QEvent, QMetaObject, QObject, Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QColor, QDesktopServices, QFontDatabase, QGuiApplication, QPalette
from PySide6.QtWidgets import QVBoxLayout, QWidget

from gui.contrast import blend, over, readable
from gui.conversation.messages import MessageLike, VersionsLike
from gui.conversation.model import Entry, MessageListModel
from gui.markdown import Theme, code_background

if TYPE_CHECKING:  # Qt Quick is imported when the scene is made (after the window's first paint)
    from PySide6.QtQuick import QQuickItem, QQuickWindow
    from PySide6.QtQuickWidgets import QQuickWidget

QML = Path(__file__).resolve().parent / "qml" / "Conversation.qml"
ICONS = QML.parent / "icons"
EXTERNAL_SCHEMES = ("http:", "https:", "mailto:")
SCREENFUL = 64  # messages: more never fit a screen (a one-line card is 68 px high)
NOTHING_SHOWN = 1e9  # px: a list's display margin this far negative leaves no room for any card


USER_CARD_TINT = 0.12
REPLY_CARD_TINT = 0.04
"""How much of the highlight (a user's card) and of the text colour (a reply's) tints the base under a card: as
qml/Conversation.qml's ``userCard`` and ``replyCard``."""


def card_grounds(palette: QPalette) -> list[QColor]:
    """What the text of the conversation is drawn on: the scene's base, a user's card, a reply's card."""
    base = palette.color(QPalette.ColorRole.Base)
    return [
        base,
        blend(base, palette.color(QPalette.ColorRole.Highlight), USER_CARD_TINT),
        blend(base, palette.color(QPalette.ColorRole.Text), REPLY_CARD_TINT),
    ]


def use_software_renderer() -> None:
    """Draw the conversation with Qt Quick's software renderer, unless ``QT_QUICK_BACKEND`` says otherwise.

    - On X11, the OpenGL path talks to the X server through Xlib (GLX), whose handler of a broken connection ends
      the process (``exit``) as soon as the display goes: the reply on screen was never stored. Without GL, Qt's
      xcb plugin sees the broken connection and the app shuts down as it should (tests/gui/test_first_start.py).
    - A QQuickWidget on the GPU turns the whole window into a GPU-composited one and loads the driver (Mesa's
      llvmpipe alone is tens of MB) for a view of text; the software renderer draws only what changed.
    - It is what every test and benchmark here measures (offscreen has no GL): docs/PERFORMANCE.md.
    Must run before the first Qt Quick window is made; ``QT_QUICK_BACKEND=rhi`` chooses the GPU (Qt's default).
    """
    from PySide6.QtQuick import QQuickWindow, QSGRendererInterface

    if not os.environ.get("QT_QUICK_BACKEND"):
        QQuickWindow.setGraphicsApi(QSGRendererInterface.GraphicsApi.Software)


def read_theme(palette: QPalette) -> Theme:
    """The colours the cards draw with. Links and muted words: the palette's, moved until readable on every card
    (gui/contrast.py makes the palette readable on the base only; a card is a little darker or lighter)."""
    grounds = card_grounds(palette)
    base = grounds[0]
    return Theme(
        dark=base.lightness() < 128,
        muted=over(readable(palette.color(QPalette.ColorRole.PlaceholderText), grounds), base).name(),
        link=over(readable(palette.color(QPalette.ColorRole.Link), grounds), base).name(),
        border=palette.color(QPalette.ColorRole.Mid).name(),
    )


@dataclass(frozen=True)
class Tail:
    """What the scene shows besides the messages: the empty state's line, the failure under the last message, the
    wait for a reply's first word, and whether the last reply may be regenerated."""

    note: str = ""
    error_title: str = ""
    error_message: str = ""
    error_partial: str = ""
    error_retry: bool = False
    error_retry_label: str = "Retry"  # "Retry in 12 s" while the wait a rate-limited server asked for runs
    has_error: bool = False
    waiting: str = ""
    can_regenerate: bool = True


class Bridge(QObject):
    """What QML calls (the actions) and reads (what only Python knows: the fixed font, the code background, the
    state of the view's tail)."""

    themeChanged = Signal()
    tailChanged = Signal()

    def __init__(self, view: ConversationView) -> None:
        super().__init__(view)
        self._view = view
        self._tail = Tail()

    @property
    def tail(self) -> Tail:
        return self._tail

    def set_tail(self, **changes: Any) -> None:
        tail = replace(self._tail, **changes)
        if tail != self._tail:
            self._tail = tail
            self.tailChanged.emit()

    @Slot()
    def retry(self) -> None:
        self._view.retryRequested.emit()

    @Slot()
    def stop(self) -> None:
        self._view.stopRequested.emit()

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

    def _font_size(self) -> float:
        # The view's text size, which follows the application's (Settings → Appearance → Text size) at once: a Qt
        # Quick Text takes the application's font when it is made and never again.
        return self._view.font().pointSizeF()

    def _code_background(self) -> str:
        return code_background(self._view.model.theme.code_style)

    def _selectable_text(self) -> bool:
        return self._view.selectable

    def _link_color(self) -> str:
        return self._view.model.theme.link

    def _note(self) -> str:
        return self._tail.note

    def _has_error(self) -> bool:
        return self._tail.has_error

    def _error_title(self) -> str:
        return self._tail.error_title

    def _error_message(self) -> str:
        return self._tail.error_message

    def _error_html(self) -> str:
        # Styled text, so escaped: a message quotes what failed (a server's answer, a path), which may hold "<" or "&".
        tail = self._tail
        return f"<b>{html.escape(tail.error_title)}</b> {html.escape(tail.error_message)}"

    def _error_partial(self) -> str:
        return self._tail.error_partial

    def _error_retry(self) -> bool:
        return self._tail.error_retry

    def _error_retry_label(self) -> str:
        return self._tail.error_retry_label

    def _waiting(self) -> str:
        return self._tail.waiting

    def _can_regenerate(self) -> bool:
        return self._tail.can_regenerate

    note = Property(str, _note, notify=tailChanged)
    hasError = Property(bool, _has_error, notify=tailChanged)
    errorTitle = Property(str, _error_title, notify=tailChanged)
    errorMessage = Property(str, _error_message, notify=tailChanged)
    errorHtml = Property(str, _error_html, notify=tailChanged)
    errorPartial = Property(str, _error_partial, notify=tailChanged)
    errorRetry = Property(bool, _error_retry, notify=tailChanged)
    errorRetryLabel = Property(str, _error_retry_label, notify=tailChanged)
    waiting = Property(str, _waiting, notify=tailChanged)
    canRegenerate = Property(bool, _can_regenerate, notify=tailChanged)
    fixedFont = Property(str, _fixed_font, notify=themeChanged)
    fontSize = Property(float, _font_size, notify=themeChanged)
    linkColor = Property(str, _link_color, notify=themeChanged)
    selectableText = Property(bool, _selectable_text, constant=True)
    codeBackground = Property(str, _code_background, notify=themeChanged)


class ConversationView(QWidget):
    """Shows one conversation in Qt Quick: the scene, its model and the bridge, without the window's state (the tail,
    the versions, the wait); the benchmarks drive it alone."""

    editRequested = Signal(str, str)  # message id, its text
    regenerateRequested = Signal()
    retryRequested = Signal()
    stopRequested = Signal()
    branchRequested = Signal(str, int)  # message id, -1 or +1
    versionRequested = Signal(str)  # the checkpoint showing the version asked for (set_versions knows them)
    copied = Signal(str)

    def __init__(self, parent: QWidget | None = None, *, selectable: bool = False, defer_scene: bool = False) -> None:
        """``selectable``: text blocks are read-only TextEdits the mouse can select in, not Text items.
        ``defer_scene``: the Qt Quick scene is made by ``load_scene`` (the window calls it after its first paint:
        Qt Quick's import, the QML load and the scene's first frame would delay it); until then the model and the
        bridge take every change, and an empty area stands in."""
        super().__init__(parent)
        self.setObjectName("conversationView")
        self.selectable = selectable
        self.thread_id: str | None = None
        self.last_open_ms = 0.0
        self.model = MessageListModel(self)
        self.model.theme = read_theme(self.palette())
        self.bridge = Bridge(self)
        self.quick: QQuickWidget | None = None
        self._root: QQuickItem | None = None
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._placeholder: QWidget | None = None
        if defer_scene:
            self._placeholder = QWidget(self)
            self._placeholder.setBackgroundRole(QPalette.ColorRole.Base)
            self._placeholder.setAutoFillBackground(True)
            self._layout.addWidget(self._placeholder)
        else:
            self.load_scene()

    def load_scene(self) -> None:
        """Make the Qt Quick scene (once): a ``QQuickWidget`` showing ``qml/Conversation.qml``."""
        if self.quick is not None:
            return
        from PySide6.QtQuickWidgets import QQuickWidget

        use_software_renderer()
        quick = QQuickWidget(self)  # Esc, which no item takes, goes on to the window (it stops a reply)
        # Owned by the scene's widget: deleted after the scene, so no binding reads them once they are gone.
        self.model.setParent(quick)
        self.bridge.setParent(quick)
        quick.setResizeMode(QQuickWidget.ResizeMode.SizeRootObjectToView)
        context = quick.rootContext()
        context.setContextProperty("messages", self.model)
        context.setContextProperty("chat", self.bridge)
        quick.setSource(QUrl.fromLocalFile(str(QML)))
        errors = quick.errors()
        root = quick.rootObject()
        if errors or root is None:
            raise RuntimeError("Conversation.qml did not load: " + "; ".join(e.toString() for e in errors))
        quick.setAccessibleName("Conversation")
        self.quick, self._root = quick, root
        if self._placeholder is not None:
            self._layout.replaceWidget(self._placeholder, quick)
            had_focus = self._placeholder.hasFocus()
            self._placeholder.deleteLater()
            self._placeholder = None
            if had_focus:
                quick.setFocus()
        else:
            self._layout.addWidget(quick)
        self.scroll_to_end()

    @property
    def surface(self) -> QQuickWidget:
        """The scene's widget (made by now)."""
        assert self.quick is not None, "the scene is not made yet (load_scene)"
        return self.quick

    # --- for tests and benchmarks ---------------------------------------------------------------------------
    def quick_window(self) -> QQuickWindow:
        return self.surface.quickWindow()

    def list_item(self) -> QQuickItem:
        from PySide6.QtQuick import QQuickItem

        assert self._root is not None, "the scene is not made yet (load_scene)"
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
        entries = [entry_of(m) for m in messages]
        # A list reset starts at the top: it would make the first screenful of cards, which the move to the end
        # then drops for the last one. With the list's bottom edge pulled far above it, the reset makes none, and
        # the cards are made from the end up. (Not for a conversation that may fit the screen: Tab goes through
        # the cards in the order they were made, and there it must be top to bottom.)
        items = self.list_item() if self._root is not None and len(entries) > SCREENFUL else None
        if items is not None:
            items.setProperty("displayMarginEnd", -NOTHING_SHOWN)
        try:
            self.model.reset(entries)
        finally:
            if items is not None:
                items.setProperty("displayMarginEnd", 0)
        self.scroll_to_end()
        self.last_open_ms = (time.perf_counter() - start) * 1000
        return self.last_open_ms

    def append_message(self, message: MessageLike) -> None:
        self.model.append(entry_of(message))
        self.scroll_to_end()

    def scroll_to_end(self) -> None:
        """Show the end now, and follow it: the first frame after an open shows the newest messages, and the
        delegates of the oldest are never made (the QML's own follow waits for the next turn of the loop)."""
        if self._root is None:
            return  # the scene starts at the end when it is made
        items = self.list_item()
        items.setProperty("currentIndex", -1)  # a current item is kept made wherever it is: message 0, far above
        items.setProperty("follow", True)
        QMetaObject.invokeMethod(items, "positionViewAtEnd")

    def show_message(self, index: int) -> None:
        """Scroll message ``index`` into view and give its card the keyboard focus (its toolbar shows)."""
        if self._root is None:
            return
        self.surface.setFocus(Qt.FocusReason.OtherFocusReason)
        QMetaObject.invokeMethod(self.list_item(), "focusMessage", Q_ARG("QVariant", index))

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



def waiting_words(seconds: float, *, thinking: bool = False) -> str:
    """What stands for a reply whose first word has not come: a local server may be loading the model for minutes,
    and a count that moves says Cairn is still waiting (not stuck); a thinking model is at work meanwhile."""
    whole = int(seconds)
    return ("Thinking…" if thinking else "Waiting for the model…") + (f" {whole} s" if whole >= 1 else "")


def entry_of(message: MessageLike) -> Entry:
    """A message as a card shows it; what chat.service.ChatMessage carries beyond the text (time, reasoning,
    usage) is read when present (messages the window shows before they are stored have none)."""
    usage = getattr(message, "usage", None)
    tokens = getattr(usage, "output_tokens", 0) or 0
    per_second = getattr(usage, "tokens_per_second", None) or 0.0
    return Entry(
        message.id,
        message.role,
        message.text,
        message.stopped,
        created=getattr(message, "created", None),
        reasoning=getattr(message, "reasoning", "") or "",
        reasoning_seconds=float(getattr(message, "thinking_seconds", None) or 0.0),
        usage={"tokens": float(tokens), "perSecond": float(per_second)} if tokens else {},
    )


def _details(entry: Entry) -> tuple[object, ...]:
    return (entry.id, entry.created, entry.reasoning, entry.reasoning_seconds, entry.usage)


def _key(message: MessageLike) -> tuple[str, str, bool]:
    return (message.role, message.text, message.stopped)


START_NOTE = "Start a conversation: type below. Enter sends, Shift+Enter starts a new line."
WAIT_TICK_MS = 1000
RETRY_TICK_MS = 250  # a countdown in seconds, updated well within each second


class QuickChatView(ConversationView):
    """The conversation as message cards (Qt Quick), as ``gui.main_window.MainWindow`` shows it: the empty state's
    note, the failure under the last message, the wait for a reply's first word, the versions of a message
    (docs/CHAT_VIEW_PROTOTYPE.md says why cards and not a text document)."""

    def __init__(self, parent: QWidget | None = None, *, defer_scene: bool = False) -> None:
        super().__init__(parent, selectable=True, defer_scene=defer_scene)
        self.setObjectName("chatView")
        self._busy = False
        self._wait_since = 0.0
        self._thinking = False
        self._wait_timer = QTimer(self)
        self._wait_timer.setInterval(WAIT_TICK_MS)
        self._wait_timer.timeout.connect(self._tick_wait)
        self._retry_at: float | None = None
        self._retry_timer = QTimer(self)
        self._retry_timer.setInterval(RETRY_TICK_MS)
        self._retry_timer.timeout.connect(self._tick_retry)
        self._versions: dict[str, VersionsLike] = {}
        self.branchRequested.connect(self._on_branch)
        self.show_note("")

    # --- what the window calls ------------------------------------------------------------------------------
    def set_versions(self, versions: Mapping[str, VersionsLike]) -> None:
        """The versions of the messages shown (by message id): a card with several shows "‹ 2 / 3 ›", and a click
        asks for the one before or after (``versionRequested`` with the checkpoint that shows it)."""
        self._versions = {m: v for m, v in versions.items() if len(v.checkpoints) > 1}
        for row, entry in enumerate(self.model.entries):
            found = self._versions.get(entry.id)
            index, count = (found.index - 1, len(found.checkpoints)) if found is not None else (0, 1)
            if (entry.branch_index, entry.branch_count) != (index, count):
                self.model.update(row, replace(entry, branch_index=index, branch_count=count))

    def _on_branch(self, message_id: str, step: int) -> None:
        found = self._versions.get(message_id)
        if found is None:
            return
        target = found.index - 1 + step
        if 0 <= target < len(found.checkpoints):
            self.versionRequested.emit(found.checkpoints[target])

    def show_note(self, text: str) -> None:
        """An empty view with a line of guidance ("Loading…", or how to start) instead of a conversation."""
        self._stop_waiting()
        self.model.reset([])
        self.thread_id = None
        self.bridge.set_tail(note=text or START_NOTE, has_error=False)
        self._update_regenerate()

    def show_conversation(self, thread_id: str, messages: Sequence[MessageLike]) -> float:
        self._stop_waiting()
        self.bridge.set_tail(note="" if messages else START_NOTE, has_error=False)
        shown_ms = super().show_conversation(thread_id, messages)
        self._update_regenerate()
        return shown_ms

    def set_messages(self, thread_id: str, messages: Sequence[MessageLike]) -> None:
        """Show this (possibly changed) message list, touching only the rows that differ."""
        new = list(messages)
        stored = self.messages()
        prefix = 0
        while prefix < min(len(stored), len(new)) and _key(stored[prefix]) == _key(new[prefix]):
            prefix += 1
        unchanged_tail = prefix == len(stored) == len(new)
        if thread_id != self.thread_id or self.bridge.tail.note or (self.streaming and not unchanged_tail):
            streaming = self.stream_text() if self.streaming else None
            since = self._wait_since
            self.show_conversation(thread_id, new)
            if streaming is not None:
                self.begin_reply(streaming, since=since)
            return
        for row in range(prefix):  # the same messages: their stored ids, times and usage arrive now
            entry = entry_of(new[row])
            if _details(entry) != _details(stored[row]):
                self.model.update(row, entry)
        if not self.streaming:
            self.model.remove_from(prefix)
            self.model.extend([entry_of(m) for m in new[prefix:]])
        self._update_regenerate()

    def append_message(self, message: MessageLike) -> None:
        self.bridge.set_tail(note="")
        self.clear_error()
        super().append_message(message)
        self._update_regenerate()

    def remove_messages_from(self, index: int) -> None:
        super().remove_messages_from(index)
        self._update_regenerate()

    def set_busy(self, busy: bool) -> None:
        """While a reply streams the last reply offers no Regenerate."""
        self._busy = busy
        self._update_regenerate()

    def begin_reply(self, text: str = "", *, since: float | None = None) -> None:
        """Start showing a streaming reply at the end (``text``: what already arrived; ``since``: when the reply was
        asked for, ``time.monotonic()``: the wait shown counts from there)."""
        self._wait_since = time.monotonic() if since is None else since
        self._thinking = False
        self.clear_error()
        self.bridge.set_tail(note="")
        if self.streaming:
            self.model.discard_reply()
        super().begin_reply(text)
        if text:
            self._stop_waiting()
        else:
            self._tick_wait()
            self._wait_timer.start()
        self._update_regenerate()
        self.scroll_to_end()

    def append_tokens(self, text: str) -> None:
        if text:
            self._stop_waiting()
        super().append_tokens(text)

    def finish_reply(self, message: MessageLike) -> None:
        """The streaming reply is complete (or stopped): it becomes a message like the others. Its usage, when the
        message carries none, stays unknown (the stored message brings it: ``set_messages``)."""
        self._stop_waiting()
        entry = entry_of(message)
        if self.streaming:
            self.model.finish_reply(message, usage=entry.usage)
        else:
            self.model.append(entry)
        self._update_regenerate()

    def discard_reply(self) -> str:
        self._stop_waiting()
        text = super().discard_reply()
        self._update_regenerate()
        return text

    def show_error(
        self,
        message: str,
        partial: str = "",
        *,
        title: str = "The reply failed.",
        retry: bool = True,
        retry_at: float | None = None,
    ) -> None:
        """An error under the last message, with what arrived before it and a Retry button; ``retry_at``: when
        (``time.monotonic()``) the server said to come back: the button counts down to it (a click before still
        retries: the wait is the server's advice)."""
        self._retry_at = retry_at
        self.bridge.set_tail(
            note="",
            has_error=True,
            error_title=title,
            error_message=message,
            error_partial=partial,
            error_retry=retry,
            error_retry_label=self._retry_label(),
        )
        if retry_at is not None and retry:
            self._retry_timer.start()
        self._update_regenerate()
        self.scroll_to_end()

    def _retry_label(self) -> str:
        left = None if self._retry_at is None else self._retry_at - time.monotonic()
        if left is None or left <= 0:
            return "Retry"
        from chat.errors import wait_words  # (imported already: the failed model call needed it)

        return f"Retry in {wait_words(left)}"

    def _tick_retry(self) -> None:
        label = self._retry_label()
        if label == "Retry":
            self._retry_timer.stop()
        self.bridge.set_tail(error_retry_label=label)

    def has_error(self) -> bool:
        return self.bridge.tail.has_error

    def error_text(self) -> str:
        tail = self.bridge.tail
        if not tail.has_error:
            return ""
        return "\n".join(part for part in (f"{tail.error_title} {tail.error_message}", tail.error_partial) if part)

    def clear_error(self) -> None:
        self._retry_timer.stop()
        self._retry_at = None
        if self.bridge.tail.has_error:
            self.bridge.set_tail(
                has_error=False, error_title="", error_message="", error_partial="", error_retry_label="Retry"
            )
            self._update_regenerate()

    def last_reply_text(self) -> str | None:
        return next((m.text for m in reversed(self.messages()) if m.role == "assistant"), None)

    # --- Qt overrides ---------------------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.FontChange:
            self.bridge.themeChanged.emit()
        if event.type() == QEvent.Type.PaletteChange:
            theme = read_theme(self.palette())
            if theme != self.model.theme:
                streaming = self.stream_text() if self.streaming else None
                self.model.set_theme(theme)  # the Markdown and the code are rendered again in the new colours
                self.bridge.themeChanged.emit()
                if streaming is not None:
                    self.begin_reply(streaming, since=self._wait_since)

    # --- the tail -------------------------------------------------------------------------------------------
    def _update_regenerate(self) -> None:
        self.bridge.set_tail(can_regenerate=not self._busy and not self.streaming and not self.has_error())

    def set_thinking(self) -> None:
        """The streaming reply's model thinks before it answers: the wait says so."""
        if not self._thinking:
            self._thinking = True
            self._tick_wait()

    def _tick_wait(self) -> None:
        self.bridge.set_tail(waiting=waiting_words(time.monotonic() - self._wait_since, thinking=self._thinking))

    def _stop_waiting(self) -> None:
        self._wait_timer.stop()
        self.bridge.set_tail(waiting="")
