"""The conversation: one QTextBrowser document, one frame per message, updated in place.

Why this shape: opening a conversation must take well under 150 ms even at 1,000 messages, and a streaming reply must
never stall the loop. So a conversation opens with only its last page of messages rendered (older pages are put in
front when the user scrolls to the top), each message lives in its own ``QTextFrame`` that is replaced or removed
on its own, and a streaming reply re-renders only its frame, at most once per ``FLUSH_MS`` however fast tokens come.
Within that frame only the reply's unfinished tail is rendered again: the Markdown blocks before the last point
where nothing that follows can change them (``StableSplit``) are rendered once and kept. Re-rendering a whole
long reply at every flush cost 20–30 ms per flush at 20–30 KB. When the reply is complete it is rendered once more
as a whole, like any stored message.

Nothing is ever fetched: links are never followed by the browser (``setOpenLinks(False)``), the Markdown renderer
emits no ``<img>``, and ``loadResource`` returns nothing. A link opens in the system browser only when clicked, and
only for http(s) and mailto. Actions live in the document as ``cairn:`` links (Copy, Edit, Regenerate, Retry, Stop,
each code block's Copy); they are reachable with Tab and Enter like any link.

A model can write a ``cairn:`` link too (``[innocent](cairn:stop)``), so an action link carries a secret drawn when
the app starts (``ACTION_TOKEN``) and a click acts only when the secret is there. Checking the token at the one place
that acts is robust whatever way the text spells the link (case, entities, whitespace, autolinks, Qt's own URL
normalisation), where escaping the scheme in the rendered Markdown would have to foresee each spelling. The model
never sees the document's HTML, so it cannot learn the token.
"""

from __future__ import annotations

import html
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, unquote

from PySide6.QtCore import QEvent, QRectF, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QDesktopServices,
    QFontDatabase,
    QGuiApplication,
    QKeyEvent,
    QPalette,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
    QTextFrame,
    QTextFrameFormat,
)
from PySide6.QtWidgets import QTextBrowser, QWidget

from gui.contrast import over, readable
from gui.markdown import Rendered, Theme, code_background, render_markdown, render_plain

SCHEME = "cairn"
ACTION_TOKEN = secrets.token_hex(16)
"""The first part of every action link the app draws; a link without it never acts (see the module docstring)."""
PAGE_SIZE = 40
"""Messages rendered when a conversation opens, and added each time the user reaches the top."""
PAGE_CHARS = 60_000
"""…unless they are long: a page stops growing at this many characters (but always holds one message)."""
FLUSH_MS = 30
"""Longest wait between a token's arrival and its appearance (about two frames)."""
CACHE_SIZE = 4_000
EXTERNAL_SCHEMES = frozenset({"http", "https", "mailto"})
STREAM_KEY = "stream"
ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}
WAIT_TICK_MS = 1000
"""How often the line that stands for a reply not begun yet says again how long Cairn has waited."""
_WAITING = '<p style="color:{muted}">{text}</p>'


def waiting_words(seconds: float, *, thinking: bool = False) -> str:
    """What stands for a reply whose first word has not come: a local server may be loading the model for minutes,
    and a count that moves says Cairn is still waiting (not stuck); a thinking model is at work meanwhile."""
    whole = int(seconds)
    return ("Thinking…" if thinking else "Waiting for the model…") + (f" {whole} s" if whole >= 1 else "")


def usage_words(usage: Any) -> str:
    """"512 tokens · 41 tok/s" for a reply the server counted (``chat.service.Usage``); "" otherwise."""
    if usage is None or not getattr(usage, "output_tokens", 0):
        return ""
    speed = getattr(usage, "tokens_per_second", None)
    return f"{usage.output_tokens:,} tokens" + (f" · {speed:.0f} tok/s" if speed else "")


class MessageLike(Protocol):
    """What the view needs of a message (``chat.service.ChatMessage`` fits; the view does not import it)."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def stopped(self) -> bool: ...


class VersionsLike(Protocol):
    """Which version of a message is shown and the checkpoint showing each (``chat.service.Versions`` fits)."""

    @property
    def index(self) -> int: ...
    @property
    def checkpoints(self) -> tuple[str, ...]: ...


def _key(message: MessageLike) -> tuple[str, str, bool]:
    return (message.role, message.text, message.stopped)


def _details(message: MessageLike) -> tuple[str, object, object]:
    """What a stored message shows besides its text (a streamed reply gets them once stored)."""
    return (message.id, getattr(message, "reasoning", ""), getattr(message, "usage", None))


def _blend(a: QColor, b: QColor, amount: float) -> QColor:
    return QColor(
        round(a.red() + (b.red() - a.red()) * amount),
        round(a.green() + (b.green() - a.green()) * amount),
        round(a.blue() + (b.blue() - a.blue()) * amount),
    )


def action_href(action: str, *args: str) -> str:
    return f"{SCHEME}:" + "/".join([ACTION_TOKEN, action, *(quote(a, safe="") for a in args)])


_FENCE = re.compile(r"(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"(?:[-*+]|\d{1,9}[.)])(?:\s|$)")


class StableSplit:
    """Where a Markdown text that is still growing can be cut, so that what is before the cut renders the same
    whatever is appended: the start of a line that follows a blank line outside any code fence, begins at column 0
    and does not begin a list item (a blank line then such a line closes every open block; a list item would join
    the list before it). Only complete lines are looked at, each once: ``advance`` costs what was added.

    Link reference definitions further down can still change a link before the cut; models practically never write
    them, and the complete reply is rendered again as a whole anyway.
    """

    def __init__(self) -> None:
        self.split = 0
        self._scanned = 0
        self._fence = ""
        self._blank_before = False

    def advance(self, text: str) -> int:
        """The last cut in ``text`` (which extends the text of earlier calls)."""
        pos = self._scanned
        while (end := text.find("\n", pos)) >= 0:
            line = text[pos:end]
            stripped = line.strip()
            if self._fence:
                if stripped and set(stripped) == {self._fence[0]} and len(stripped) >= len(self._fence):
                    self._fence = ""
                self._blank_before = False
            else:
                if self._blank_before and line[:1] and not line[0].isspace() and not _LIST_ITEM.match(line):
                    self.split = pos
                fence = _FENCE.match(stripped)
                self._fence = fence.group(1) if fence else ""
                self._blank_before = not stripped
            pos = end + 1
        self._scanned = pos
        return self.split


_OPENING_TAG = re.compile(r"\s*<(\w+)[^>]*>")
_NEW_BLOCKS = frozenset({"ul", "ol", "table", "hr"})
"""HTML that starts with these makes its own blocks when inserted at the end of a block; anything else is merged
into the block the cursor is in."""


def _leading_tags(html_text: str) -> tuple[str, ...]:
    """The tags opened before the first text (``<blockquote>\n<p>`` → blockquote, p): what the first block is."""
    tags: list[str] = []
    pos = 0
    while (found := _OPENING_TAG.match(html_text, pos)) is not None:
        tags.append(found.group(1).lower())
        pos = found.end()
        if tags[-1] in ("hr", "br"):
            break
    return tuple(tags)


class ChatView(QTextBrowser):
    """Shows one conversation; emits what the user asks for, does the copying itself."""

    editRequested = Signal(str, str)  # message id, its text
    regenerateRequested = Signal()
    retryRequested = Signal()
    stopRequested = Signal()
    copied = Signal(str)  # a short description of what went to the clipboard
    versionRequested = Signal(str)  # the checkpoint showing the version of a message the user asked for

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatView")
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.setSearchPaths([])
        self.setAccessibleName("Conversation")
        self.anchorClicked.connect(self._on_anchor)
        self.thread_id: str | None = None
        self._messages: list[MessageLike] = []
        self._first_shown = 0
        self._frames: list[QTextFrame] = []  # one per message in self._messages[self._first_shown:]
        self._more_frame: QTextFrame | None = None
        self._note_frame: QTextFrame | None = None  # the empty or loading state
        self._stream_frame: QTextFrame | None = None
        self._error_frame: QTextFrame | None = None
        self._error_args: tuple[str, str, str, bool] | None = None
        self._regenerate_on: int | None = None  # index of the message showing "Regenerate"
        self._stream_parts: list[str] = []
        self._stream_rendered_len = 0
        self._stream_split = StableSplit()
        self._stream_stable_code: list[str] = []  # the code blocks of the part of the reply rendered for good
        self._stream_tail_len = 0  # document positions from the end of that part to the end of the frame
        self._block_formats: dict[tuple[str, ...], tuple[QTextBlockFormat, QTextCharFormat]] = {}
        self._code: dict[str, tuple[str, ...]] = {}
        self._versions: dict[str, VersionsLike] = {}  # message id -> its versions, for messages with several
        self._cache: OrderedDict[tuple[str, str, bool], Rendered] = OrderedDict()
        self._theme = self._read_theme()
        self._stick_to_bottom = True
        self._busy = False
        self.flush_count = 0
        """How many times the streaming reply was re-rendered (tests check that tokens are coalesced)."""
        self.last_open_ms = 0.0
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush_stream)
        self._wait_since = 0.0  # time.monotonic() when the streaming reply was asked for
        self._thinking = False  # the streaming reply's model is thinking (its reasoning streams, no answer yet)
        self._open_thoughts: set[str] = set()  # messages whose "Thought for N s" is unfolded
        self._wait_timer = QTimer(self)
        self._wait_timer.setInterval(WAIT_TICK_MS)
        self._wait_timer.timeout.connect(self._tick_wait)
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range_changed)
        self._apply_document_style()
        self.show_note("")

    # --- what the window calls ------------------------------------------------------------------------------
    def messages(self) -> list[MessageLike]:
        return list(self._messages)

    def shown_count(self) -> int:
        """How many messages are rendered now (the rest are older pages not yet scrolled to)."""
        return len(self._frames)

    @property
    def streaming(self) -> bool:
        return self._stream_frame is not None

    def stream_text(self) -> str:
        return "".join(self._stream_parts)

    def show_note(self, text: str) -> None:
        """An empty view with a line of guidance ("Loading…", or how to start) instead of a conversation."""
        self._reset()
        self.thread_id = None
        if not text:
            text = "Start a conversation: type below. Enter sends, Shift+Enter starts a new line."
        cursor = self._cursor_at_end()
        fmt = QTextFrameFormat()
        fmt.setPadding(24)
        self._note_frame = cursor.insertFrame(fmt)
        cursor.insertHtml(f'<p align="center" style="color:{self._theme.muted}">{html.escape(text)}</p>')

    def show_conversation(self, thread_id: str, messages: Sequence[MessageLike]) -> float:
        """Render a conversation from scratch (its last page); returns the milliseconds it took."""
        start = time.perf_counter()
        self._reset()
        self.thread_id = thread_id
        self._messages = list(messages)
        if not self._messages:
            self.show_note("")
            self.thread_id = thread_id
        else:
            self._first_shown = self._page_start(len(self._messages))
            self._update_more()
            self._insert_frames(self._first_shown, len(self._messages), self._insert_position())
            self._update_regenerate()
        self._stick_to_bottom = True
        self._scroll_to_bottom()
        self.last_open_ms = (time.perf_counter() - start) * 1000
        return self.last_open_ms

    def set_messages(self, thread_id: str, messages: Sequence[MessageLike]) -> None:
        """Show this (possibly changed) message list, touching only the frames that differ."""
        if thread_id != self.thread_id or self._note_frame is not None:
            streaming = self.stream_text() if self.streaming else None
            self.show_conversation(thread_id, messages)
            if streaming is not None:
                self.begin_reply(streaming, since=self._wait_since)
            return
        new = list(messages)
        old = self._messages
        prefix = 0
        while prefix < min(len(old), len(new)) and _key(old[prefix]) == _key(new[prefix]):
            prefix += 1
        if prefix < self._first_shown:
            self.show_conversation(thread_id, new)
            return
        keep_scroll = self.verticalScrollBar().value()
        self._remove_messages_from(prefix)
        for index in range(self._first_shown, prefix):
            if _details(old[index]) != _details(new[index]):
                self._messages[index] = new[index]
                self._render_into(self._frames[index - self._first_shown], index)
        self._messages = new[:prefix]
        self._messages.extend(new[prefix:])
        self._insert_frames(prefix, len(new), self._insert_position())
        self._update_regenerate()
        if not self._stick_to_bottom:
            self.verticalScrollBar().setValue(keep_scroll)

    def append_message(self, message: MessageLike) -> None:
        """Add a message at the end (the user's, shown as soon as it is sent)."""
        self._drop_note()
        self.clear_error()
        self._messages.append(message)
        self._insert_frames(len(self._messages) - 1, len(self._messages), self._insert_position())
        self._update_regenerate()
        self._stick_to_bottom = True
        self._scroll_to_bottom()

    def remove_messages_from(self, index: int) -> None:
        """Drop a message and all after it (regenerate and edit-and-resend start a new branch there)."""
        if index < self._first_shown:
            self.show_conversation(self.thread_id or "", self._messages[:index])
            return
        self._remove_messages_from(index)
        self._messages = self._messages[:index]
        self._update_regenerate()

    def set_busy(self, busy: bool) -> None:
        """While a reply streams the last reply offers no Regenerate."""
        if busy != self._busy:
            self._busy = busy
            self._update_regenerate()

    def begin_reply(self, text: str = "", *, since: float | None = None) -> None:
        """Start showing a streaming reply at the end (``text``: what already arrived; ``since``: when the reply was
        asked for, ``time.monotonic()``, now by default: the wait shown counts from there)."""
        self._wait_since = time.monotonic() if since is None else since
        self._thinking = False
        self.clear_error()
        self._drop_note()
        if self._stream_frame is None:
            cursor = self._cursor_at_end()
            self._stream_frame = cursor.insertFrame(self._frame_format("assistant"))
        self._stream_parts = [text] if text else []
        self._stream_rendered_len = -1
        # The header, then the tail (only the tail is rendered again): the wait until the first token.
        frame = self._stream_frame
        muted = self._theme.muted
        cursor = frame.firstCursorPosition()
        cursor.setPosition(frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        cursor.setBlockFormat(QTextBlockFormat())  # as in a new frame, which is what a finished reply is shown in
        cursor.setBlockCharFormat(QTextCharFormat())
        cursor.insertHtml(
            f'<p style="margin-bottom:4px"><b>Assistant</b> <span style="color:{muted}">· writing</span>'
            f' &nbsp;<a href="{action_href("stop")}">Stop</a></p>{self._waiting_html()}'
        )
        header = frame.firstCursorPosition().block()
        self._stream_tail_len = frame.lastPosition() - (header.position() + header.length() - 1)
        self._stream_split = StableSplit()
        self._stream_stable_code = []
        self._flush_stream()
        if not text:
            self._wait_timer.start()
        self._stick_to_bottom = True
        self._scroll_to_bottom()

    def append_tokens(self, text: str) -> None:
        """Add streamed text; it is shown at the next flush (at most ``FLUSH_MS`` later), not now."""
        if self._stream_frame is None:
            self.begin_reply()
        self._stream_parts.append(text)
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def finish_reply(self, message: MessageLike) -> None:
        """The streaming reply is complete (or stopped): it becomes a message like the others."""
        self._flush_timer.stop()
        self._wait_timer.stop()
        frame = self._stream_frame
        self._stream_frame = None
        self._stream_parts = []
        self._messages.append(message)
        if frame is None:
            self._insert_frames(len(self._messages) - 1, len(self._messages), self._insert_position())
        else:
            # Once: the reply takes its Regenerate (if it gets it) before its frame is rendered, not after.
            self._frames.append(frame)
            self._update_regenerate(skip=len(self._messages) - 1)
            self._render_into(frame, len(self._messages) - 1)
        self._code.pop(STREAM_KEY, None)
        self._update_regenerate()

    def discard_reply(self) -> str:
        """Remove the streaming reply (it failed); returns what had arrived."""
        self._flush_timer.stop()
        self._wait_timer.stop()
        text = self.stream_text()
        if self._stream_frame is not None:
            self._remove_frame(self._stream_frame)
        self._stream_frame = None
        self._stream_parts = []
        self._code.pop(STREAM_KEY, None)
        return text

    def show_error(
        self, message: str, partial: str = "", *, title: str = "The reply failed.", retry: bool = True
    ) -> None:
        """An error block under the last message, with a Retry button (a link drawn as a button)."""
        self.clear_error()
        self._error_args = (message, partial, title, retry)
        theme = self._theme
        parts = [f"<p><b>{html.escape(title)}</b> {html.escape(message)}</p>"]
        if partial:
            parts.append(
                f'<p style="color:{theme.muted}">What arrived before the failure (not saved):</p>'
                f'<blockquote style="color:{theme.muted}">{render_plain(partial)}</blockquote>'
            )
        if retry:
            palette = self.palette()
            button = palette.color(QPalette.ColorRole.Button).name()
            text = palette.color(QPalette.ColorRole.ButtonText).name()
            parts.append(
                f'<table cellpadding="5" cellspacing="0" bgcolor="{button}" style="border-color:{theme.border}">'
                f'<tr><td><a href="{action_href("retry")}" style="color:{text}; text-decoration:none">'
                "<b>&nbsp;↻ Retry&nbsp;</b></a></td></tr></table>"
            )
        cursor = self._cursor_at_end()
        self._error_frame = cursor.insertFrame(self._frame_format("error"))
        cursor.insertHtml("".join(parts))
        self._update_regenerate()
        self._stick_to_bottom = True
        self._scroll_to_bottom()

    def has_error(self) -> bool:
        return self._error_frame is not None

    def error_text(self) -> str:
        if self._error_frame is None:
            return ""
        cursor = self._error_frame.firstCursorPosition()
        cursor.setPosition(self._error_frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
        return cursor.selection().toPlainText()

    def clear_error(self) -> None:
        if self._error_frame is not None:
            self._remove_frame(self._error_frame)
            self._error_frame = None
            self._error_args = None
            self._update_regenerate()

    def last_reply_text(self) -> str | None:
        for message in reversed(self._messages):
            if message.role == "assistant":
                return message.text
        return None

    def load_earlier(self) -> bool:
        """Render the previous page in front, keeping what is on screen where it is. False if none is left."""
        if self._first_shown == 0 or not self._frames:
            return False
        bar = self.verticalScrollBar()
        layout = self.document().documentLayout()
        anchor = self._frames[0]
        offset = layout.frameBoundingRect(anchor).top() - bar.value()
        start = self._page_start(self._first_shown)
        stop = self._first_shown
        self._first_shown = start
        cursor = QTextCursor(self.document())
        cursor.setPosition(anchor.firstPosition() - 1)
        self._insert_frames(start, stop, cursor, front=True)
        self._update_more()
        self._stick_to_bottom = False
        bar.setValue(round(layout.frameBoundingRect(anchor).top() - offset))
        return True

    def anchor_rect(self, href: str) -> QRectF | None:
        """Where the link to ``href`` is, in viewport coordinates (None if it is not in the document)."""
        document = self.document()
        block = document.begin()
        while block.isValid():
            it = block.begin()
            while not it.atEnd():
                fragment = it.fragment()
                if fragment.isValid() and fragment.charFormat().anchorHref() == href:
                    cursor = QTextCursor(document)
                    cursor.setPosition(fragment.position() + min(1, fragment.length() - 1))
                    self.setTextCursor(cursor)
                    self.ensureCursorVisible()
                    rect = self.cursorRect(cursor)
                    return QRectF(rect)
                it += 1
            block = block.next()
        return None

    def hrefs(self) -> list[str]:
        """Every link in the document, in order (for tests and accessibility checks)."""
        found: list[str] = []
        block = self.document().begin()
        while block.isValid():
            it = block.begin()
            while not it.atEnd():
                href = it.fragment().charFormat().anchorHref()
                if href and (not found or found[-1] != href):
                    found.append(href)
                it += 1
            block = block.next()
        return found

    # --- Qt overrides ---------------------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape:
            event.ignore()  # the window's: Esc stops the reply whatever has the focus
            return
        super().keyPressEvent(event)

    def loadResource(self, _type: int, _name: QUrl | str) -> Any:
        return None  # nothing from disk or network, ever: the document needs no resources

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            theme = self._read_theme()
            if theme != self._theme:
                self._theme = theme
                self._cache.clear()
                self._apply_document_style()
                self._rebuild()

    # --- rendering ------------------------------------------------------------------------------------------
    def _read_theme(self) -> Theme:
        palette = self.palette()
        base = palette.color(QPalette.ColorRole.Base)
        dark = base.lightness() < 128
        # Links (the message actions, each code block's Copy) and muted words are drawn on the view's base, on a user
        # message's or an error's tint and on a code block: the palette's colours, moved until readable on all.
        grounds = [base, *(self._frame_format(kind).background().color() for kind in ("user", "error"))]
        grounds.append(QColor(code_background(Theme(dark=dark).code_style)))
        return Theme(
            dark=dark,
            muted=over(readable(palette.color(QPalette.ColorRole.PlaceholderText), grounds), base).name(),
            link=over(readable(palette.color(QPalette.ColorRole.Link), grounds), base).name(),
            border=palette.color(QPalette.ColorRole.Mid).name(),
        )

    def _apply_document_style(self) -> None:
        self._block_formats.clear()
        fixed = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()
        self.document().setDefaultStyleSheet(
            f"pre, code {{ font-family: '{fixed}'; }}"
            " pre { margin-top: 0; margin-bottom: 0; }"
            " p { margin-top: 0; margin-bottom: 6px; }"
            f" a {{ color: {self._theme.link}; }}"
            " blockquote { margin-left: 12px; }"
        )

    def _frame_format(self, kind: str) -> QTextFrameFormat:
        palette = self.palette()
        base = palette.color(QPalette.ColorRole.Base)
        fmt = QTextFrameFormat()
        fmt.setPadding(10)
        fmt.setTopMargin(2)
        fmt.setBottomMargin(2)
        if kind == "user":
            fmt.setBackground(_blend(base, palette.color(QPalette.ColorRole.Highlight), 0.12))
            fmt.setLeftMargin(48)
        elif kind == "error":
            fmt.setBackground(_blend(base, QColor("#d32f2f"), 0.16))
            fmt.setBorder(1)
            fmt.setBorderBrush(_blend(base, QColor("#d32f2f"), 0.6))
        elif kind == "more":
            fmt.setPadding(4)
        return fmt

    def _rendered(self, message: MessageLike) -> Rendered:
        key = (message.id, message.text, self._theme.dark)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        if message.role == "user" and "```" not in message.text and "\n    " not in message.text:
            # Plain text is most user messages: skipping the Markdown parser is 5x faster and shows what was typed.
            rendered = Rendered(render_plain(message.text), ())
        else:
            rendered = render_markdown(
                message.text, self._theme, code_href=lambda i: action_href("code", message.id, str(i))
            )
        self._cache[key] = rendered
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return rendered

    def _message_html(self, index: int) -> str:
        message = self._messages[index]
        rendered = self._rendered(message)
        self._code[message.id] = rendered.code_blocks
        muted = self._theme.muted
        name = ROLE_NAMES.get(message.role, message.role)
        header = f"<b>{name}</b>"
        if message.stopped:
            header += f' <span style="color:{muted}">· stopped</span>'
        return f'<p style="margin-bottom:4px">{header}</p>{self._thought_html(message)}{rendered.html}' + (
            self._actions_html(index)
        )

    def _thought_html(self, message: MessageLike) -> str:
        """A thinking model's reasoning, folded: "▸ Thought for 12 s" unfolds it (a click on it again folds it)."""
        reasoning = str(getattr(message, "reasoning", "") or "")
        if not reasoning:
            return ""
        seconds = getattr(message, "thinking_seconds", None)
        label = f"Thought for {seconds:.0f} s" if seconds else "Thought"
        opened = message.id in self._open_thoughts
        link = f'<a href="{action_href("thought", message.id)}">{"▾" if opened else "▸"} {label}</a>'
        line = f'<p style="font-size:small; margin-bottom:4px">{link}</p>'
        if not opened:
            return line
        return line + f'<blockquote style="color:{self._theme.muted}">{render_plain(reasoning)}</blockquote>'

    def _actions_html(self, index: int) -> str:
        """The message's last paragraph: its actions."""
        message = self._messages[index]
        actions = [f'<a href="{action_href("copy", message.id)}">Copy</a>']
        if message.role == "user" and not message.id.startswith("pending:"):
            actions.append(f'<a href="{action_href("edit", message.id)}">Edit</a>')
        if index == self._regenerate_on:
            actions.append(f'<a href="{action_href("regenerate")}">Regenerate</a>')
        versions = self._versions.get(message.id)
        if versions is not None and len(versions.checkpoints) > 1:
            actions.insert(0, self._switcher_html(versions))
        counted = usage_words(getattr(message, "usage", None))
        if counted:
            actions.append(f'<span style="color:{self._theme.muted}">{counted}</span>')
        return f'<p style="font-size:small; margin-bottom:0">{" &nbsp;·&nbsp; ".join(actions)}</p>'

    def _switcher_html(self, versions: VersionsLike) -> str:
        """"‹ 2 / 3 ›": the arrows link to the versions before and after the one shown (plain text at the ends)."""
        index, count = versions.index, len(versions.checkpoints)

        def arrow(symbol: str, target: int, name: str) -> str:
            if not 1 <= target <= count:
                return f'<span style="color:{self._theme.muted}">{symbol}</span>'
            href = action_href("version", versions.checkpoints[target - 1])
            return f'<a href="{href}" title="{name} version">{symbol}</a>'

        return f"{arrow('‹', index - 1, 'Previous')} {index} / {count} {arrow('›', index + 1, 'Next')}"

    def set_versions(self, versions: Mapping[str, VersionsLike]) -> None:
        """The versions of the messages shown (by message id; see chat.service.ConversationView.versions): a message
        with several shows "‹ 2 / 3 ›", and a click asks for another (``versionRequested``)."""
        changed = {m for m in set(self._versions) | set(versions) if self._versions.get(m) != versions.get(m)}
        self._versions = {m: v for m, v in versions.items() if len(v.checkpoints) > 1}
        for index in range(self._first_shown, len(self._messages)):
            if self._messages[index].id in changed:
                position = index - self._first_shown
                if position < len(self._frames):
                    self._render_actions_into(self._frames[position], index)

    def _render_into(self, frame: QTextFrame, index: int) -> None:
        """Render the message again into its frame, exactly as into a new frame (replacing the content in one
        insertion gave the header another margin than a new frame gives it: the text moved on a reload)."""
        cursor = frame.firstCursorPosition()
        cursor.setPosition(frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        cursor.setBlockFormat(QTextBlockFormat())
        cursor.setBlockCharFormat(QTextCharFormat())
        cursor.insertHtml(self._message_html(index))

    def _render_actions_into(self, frame: QTextFrame, index: int) -> None:
        """Replace only the actions paragraph (the frame's last block): a long reply is not laid out again."""
        cursor = QTextCursor(self.document().findBlock(frame.lastPosition()))
        cursor.setPosition(frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
        cursor.insertHtml(self._actions_html(index))

    def _insert_frames(self, start: int, stop: int, cursor: QTextCursor, *, front: bool = False) -> None:
        """Insert frames for messages[start:stop] at ``cursor`` (which must sit between frames)."""
        new: list[QTextFrame] = []
        for index in range(start, stop):
            frame = cursor.insertFrame(self._frame_format(self._messages[index].role))
            cursor.insertHtml(self._message_html(index))
            new.append(frame)
            cursor.setPosition(frame.lastPosition() + 1)
        if front:
            self._frames[:0] = new
        else:
            self._frames.extend(new)

    def _flush_stream(self) -> None:
        frame = self._stream_frame
        if frame is None:
            return
        text = self.stream_text()
        if len(text) == self._stream_rendered_len:
            return
        started = time.perf_counter()
        self._stream_rendered_len = len(text)
        if text:
            self._wait_timer.stop()
            self.flush_count += 1  # the renders of the reply, not those of the wait before it
        # The frame holds the header, the part rendered for good, then the tail: only the tail is replaced.
        done = self._stream_split.split
        split = self._stream_split.advance(text)
        cursor = QTextCursor(self.document())
        cursor.setPosition(frame.lastPosition() - self._stream_tail_len)
        kept = cursor.blockFormat(), cursor.blockCharFormat()  # removing the tail's first separator changes them
        cursor.setPosition(frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        cursor.setBlockFormat(kept[0])
        cursor.setBlockCharFormat(kept[1])
        if split > done:
            stable = self._render_stream_part(text[done:split])
            self._stream_stable_code.extend(stable.code_blocks)
            self._append_html(frame, stable.html)
        stable_end = frame.lastPosition()
        tail = self._render_stream_part(text[split:]) if text else Rendered(self._waiting_html(), ())
        self._append_html(frame, tail.html)
        self._stream_tail_len = frame.lastPosition() - stable_end
        self._code[STREAM_KEY] = (*self._stream_stable_code, *tail.code_blocks)
        # A long reply costs more to render: space the renders out so they never take over the loop.
        spent_ms = (time.perf_counter() - started) * 1000
        self._flush_timer.setInterval(max(FLUSH_MS, round(spent_ms * 3)))
        if self._stick_to_bottom:
            self._scroll_to_bottom()

    def set_thinking(self) -> None:
        """The streaming reply's model thinks before it answers: the wait says so."""
        if not self._thinking:
            self._thinking = True
            self._tick_wait()

    def _waiting_html(self) -> str:
        text = waiting_words(time.monotonic() - self._wait_since, thinking=self._thinking)
        return _WAITING.format(muted=self._theme.muted, text=html.escape(text))

    def _tick_wait(self) -> None:
        if self._stream_frame is None or self._stream_parts:
            self._wait_timer.stop()
            return
        self._stream_rendered_len = -1  # the text has not changed, the wait has
        self._flush_stream()

    def _render_stream_part(self, text: str) -> Rendered:
        """Markdown of a piece of the streaming reply; its code blocks are numbered after those already shown."""
        offset = len(self._stream_stable_code)
        rendered = render_markdown(
            text, self._theme, code_href=lambda i: action_href("code", STREAM_KEY, str(offset + i))
        )
        return Rendered(rendered.html.strip(), rendered.code_blocks)

    def _append_html(self, frame: QTextFrame, html_text: str) -> None:
        """Add blocks at the end of ``frame`` exactly as if they had been part of one ``insertHtml`` with what is
        there. Inserted at the end of a block, HTML that starts with a paragraph or a heading is merged into that
        block and keeps the block's format, so it goes into a new block that has the format it would have had."""
        if not html_text:
            return
        cursor = QTextCursor(self.document())
        cursor.setPosition(frame.lastPosition())
        tags = _leading_tags(html_text)
        if not tags or tags[0] not in _NEW_BLOCKS:
            cursor.insertBlock(*self._first_block_format(tags))
        cursor.insertHtml(html_text)

    def _first_block_format(self, tags: tuple[str, ...]) -> tuple[QTextBlockFormat, QTextCharFormat]:
        """The formats the first block of HTML opening with ``tags`` gets in this document (style sheet included)."""
        found = self._block_formats.get(tags)
        if found is None:
            scratch = QTextDocument()
            scratch.setDefaultFont(self.document().defaultFont())
            scratch.setDefaultStyleSheet(self.document().defaultStyleSheet())
            text = "" if tags[-1:] in (("hr",), ("br",)) else "x"
            scratch.setHtml("".join(f"<{t}>" for t in tags) + text + "".join(f"</{t}>" for t in reversed(tags)))
            block = scratch.firstBlock()
            found = self._block_formats[tags] = (block.blockFormat(), block.charFormat())
        return found

    def _rebuild(self) -> None:
        """Render everything again (the palette changed)."""
        if self._note_frame is not None:
            return
        streaming = self.stream_text() if self.streaming else None
        error = self._error_args
        first = self._first_shown
        self.show_conversation(self.thread_id or "", self._messages)
        while self._first_shown > first and self.load_earlier():
            pass
        if streaming is not None:
            self.begin_reply(streaming, since=self._wait_since)
        if error is not None:
            message, partial, title, retry = error
            self.show_error(message, partial, title=title, retry=retry)

    # --- structure ------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._flush_timer.stop()
        self._wait_timer.stop()
        self.document().clear()
        self._messages = []
        self._frames = []
        self._first_shown = 0
        self._more_frame = self._note_frame = self._stream_frame = self._error_frame = None
        self._error_args = None
        self._regenerate_on = None
        self._stream_parts = []
        self._code = {}
        self._versions = {}

    def _page_start(self, stop: int) -> int:
        start, chars = stop, 0
        while start > 0 and stop - start < PAGE_SIZE and (chars < PAGE_CHARS or start == stop):
            start -= 1
            chars += len(self._messages[start].text)
        return start

    def _update_more(self) -> None:
        if self._first_shown == 0:
            if self._more_frame is not None:
                self._remove_frame(self._more_frame)
                self._more_frame = None
            return
        text = (
            f'<p align="center" style="font-size:small"><a href="{action_href("earlier")}">'
            f"Show earlier messages ({self._first_shown} more)</a></p>"
        )
        if self._more_frame is None:
            cursor = QTextCursor(self.document())
            cursor.setPosition(0)
            self._more_frame = cursor.insertFrame(self._frame_format("more"))
            cursor.insertHtml(text)
        else:
            cursor = self._more_frame.firstCursorPosition()
            cursor.setPosition(self._more_frame.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
            cursor.insertHtml(text)

    def _drop_note(self) -> None:
        if self._note_frame is not None:
            self._remove_frame(self._note_frame)
            self._note_frame = None

    def _cursor_at_end(self) -> QTextCursor:
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        return cursor

    def _insert_position(self) -> QTextCursor:
        """Where a new message goes: after the last message, before a streaming reply or an error block."""
        tails = [f for f in (self._stream_frame, self._error_frame) if f is not None]
        if not tails:
            return self._cursor_at_end()
        cursor = QTextCursor(self.document())
        cursor.setPosition(min(f.firstPosition() for f in tails) - 1)
        return cursor

    def _remove_frame(self, frame: QTextFrame) -> None:
        self._remove_range(frame, frame)

    def _remove_range(self, first: QTextFrame, last: QTextFrame) -> None:
        cursor = QTextCursor(self.document())
        cursor.setPosition(first.firstPosition() - 1)
        cursor.setPosition(last.lastPosition() + 1, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()

    def _remove_messages_from(self, index: int) -> None:
        shown_from = index - self._first_shown
        if shown_from < len(self._frames):
            self._remove_range(self._frames[shown_from], self._frames[-1])
            for message in self._messages[index:]:
                self._code.pop(message.id, None)
            del self._frames[shown_from:]
        if self._regenerate_on is not None and self._regenerate_on >= index:
            self._regenerate_on = None

    def _update_regenerate(self, *, skip: int | None = None) -> None:
        """Only the last reply offers Regenerate, and only when nothing streams or failed after it. The frames
        concerned get their actions line again (``skip``: one that is about to be rendered whole anyway)."""
        want: int | None = None
        last = len(self._messages) - 1
        if (
            last >= self._first_shown
            and self._messages[last].role == "assistant"
            and not self._busy
            and self._stream_frame is None
            and self._error_frame is None
        ):
            want = last
        if want == self._regenerate_on:
            return
        previous, self._regenerate_on = self._regenerate_on, want
        for index in (previous, want):
            if index is not None and index != skip and self._first_shown <= index < len(self._messages):
                position = index - self._first_shown
                if position < len(self._frames):
                    self._render_actions_into(self._frames[position], index)

    # --- scrolling ------------------------------------------------------------------------------------------
    def _scroll_to_bottom(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _on_scrolled(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._stick_to_bottom = value >= bar.maximum() - 8
        if value == bar.minimum() and bar.maximum() > 0 and self._first_shown > 0:
            QTimer.singleShot(0, self.load_earlier)

    def _on_range_changed(self, _minimum: int, maximum: int) -> None:
        if self._stick_to_bottom:
            self.verticalScrollBar().setValue(maximum)

    # --- links ----------------------------------------------------------------------------------------------
    def _on_anchor(self, url: QUrl) -> None:
        scheme = url.scheme().lower()
        if scheme in EXTERNAL_SCHEMES:
            QDesktopServices.openUrl(url)  # only on an explicit click, and never inside the app
            return
        if scheme != SCHEME:
            return
        token, *parts = url.path().split("/")
        if not parts or token != ACTION_TOKEN:
            return  # a cairn: link the app did not draw (written by the model or the user): inert
        action, *args = [unquote(part) for part in parts]
        if action == "copy" and args:
            message = next((m for m in self._messages if m.id == args[0]), None)
            if message is not None:
                QGuiApplication.clipboard().setText(message.text)
                self.copied.emit("the message")
        elif action == "code" and len(args) == 2:
            blocks = self._code.get(args[0], ())
            index = int(args[1]) if args[1].isdigit() else -1
            if 0 <= index < len(blocks):
                QGuiApplication.clipboard().setText(blocks[index])
                self.copied.emit("the code")
        elif action == "edit" and args:
            message = next((m for m in self._messages if m.id == args[0]), None)
            if message is not None:
                self.editRequested.emit(message.id, message.text)
        elif action == "regenerate":
            self.regenerateRequested.emit()
        elif action == "version" and args:
            self.versionRequested.emit(args[0])
        elif action == "thought" and args:
            self._open_thoughts ^= {args[0]}
            index = next((i for i, m in enumerate(self._messages) if m.id == args[0]), -1)
            if self._first_shown <= index < len(self._messages) and index - self._first_shown < len(self._frames):
                self._render_into(self._frames[index - self._first_shown], index)
        elif action == "retry":
            self.retryRequested.emit()
        elif action == "stop":
            self.stopRequested.emit()
        elif action == "earlier":
            self.load_earlier()
