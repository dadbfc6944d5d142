"""Where the user writes: Enter sends, Shift+Enter starts a new line, one button that is Send or Stop."""

from __future__ import annotations

import math

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QFontMetrics, QKeyEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

MAX_LINES = 10


class MessageEdit(QPlainTextEdit):
    """A text box that grows with its text (up to ``MAX_LINES``) and sends on Enter."""

    submitted = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageEdit")
        self.setTabChangesFocus(True)
        self.setPlaceholderText("Message Cairn…  (Enter sends, Shift+Enter for a new line)")
        self.setAccessibleName("Message")
        self.document().contentsChanged.connect(self.updateGeometry)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            modifiers = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
            if modifiers == Qt.KeyboardModifier.NoModifier:
                self.submitted.emit()
                event.accept()
                return
            if modifiers & Qt.KeyboardModifier.ShiftModifier:
                self.insertPlainText("\n")  # Shift+Enter: a new line, never a paragraph separator
                event.accept()
                return
        super().keyPressEvent(event)

    def _text_height(self) -> float:
        """The height of the first ``MAX_LINES`` lines as laid out. Not lines × the font's line spacing: a line in a
        fallback font (Chinese, Japanese, emoji) is taller than the primary font's, and the box then scrolled."""
        height, lines = 0.0, 0
        block = self.document().firstBlock()
        while block.isValid() and lines < MAX_LINES:
            rect = self.blockBoundingRect(block)
            count = max(1, block.layout().lineCount())
            if lines + count > MAX_LINES:
                return height + rect.height() * (MAX_LINES - lines) / count
            height += rect.height()
            lines += count
            block = block.next()
        return max(height, QFontMetrics(self.font()).lineSpacing())

    def sizeHint(self) -> QSize:
        text_height = math.ceil(self._text_height() + self.document().documentMargin() * 2)
        # The frame, the style sheet's padding and the viewport margins: whatever is not the viewport.
        chrome = max(0, self.height() - self.viewport().height()) if self.isVisible() else 2 * self.frameWidth() + 8
        return QSize(super().sizeHint().width(), text_height + chrome + 2)

    def minimumSizeHint(self) -> QSize:
        return self.sizeHint()


class Composer(QWidget):
    """``sendRequested(text)`` on Enter or Send; ``stopRequested`` on Stop while a reply streams.

    The text is cleared when a message is handed over; the window gives it back with ``restore_draft`` if sending
    failed before the message was stored, so nothing typed is lost. ``start_edit`` turns the next send into an
    edit of an earlier message (the banner says so; Esc or Cancel leaves that mode).
    """

    sendRequested = Signal(str)
    stopRequested = Signal()
    editCancelled = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self.edit = MessageEdit(self)
        self.button = QPushButton("Send", self)
        self.button.setObjectName("sendButton")
        self.button.setDefault(False)
        self.button.setAutoDefault(False)
        self.edit_banner = QWidget(self)
        self.edit_label = QLabel("Editing a message: sending starts the conversation again from there.")
        self.edit_label.setWordWrap(True)
        cancel = QPushButton("Cancel")
        cancel.setObjectName("cancelEditButton")
        cancel.clicked.connect(self.cancel_edit)
        banner = QHBoxLayout(self.edit_banner)
        banner.setContentsMargins(0, 0, 0, 0)
        banner.addWidget(self.edit_label, 1)
        banner.addWidget(cancel)
        self.edit_banner.hide()

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.button, 0, Qt.AlignmentFlag.AlignBottom)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 10)
        layout.setSpacing(4)
        layout.addWidget(self.edit_banner)
        layout.addLayout(row)

        self.editing_id: str | None = None
        self._streaming = False
        self.edit.submitted.connect(self.submit)
        self.edit.textChanged.connect(self._update_button)
        self.button.clicked.connect(self._on_button)
        self._update_button()

    # --- state ----------------------------------------------------------------------------------------------
    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)
        self.edit.moveCursor(self.edit.textCursor().MoveOperation.End)

    @property
    def streaming(self) -> bool:
        return self._streaming

    def set_streaming(self, streaming: bool) -> None:
        """While a reply streams the button is Stop, and Enter does not send (the text waits)."""
        self._streaming = streaming
        self._update_button()

    def start_edit(self, message_id: str, text: str) -> None:
        self.editing_id = message_id
        self.set_text(text)
        self.edit_banner.show()
        self.edit.setFocus()

    def cancel_edit(self) -> None:
        if self.editing_id is None:
            return
        self.editing_id = None
        self.edit_banner.hide()
        self.edit.clear()
        self._update_button()
        self.editCancelled.emit()

    def finish_edit(self) -> None:
        self.editing_id = None
        self.edit_banner.hide()
        self._update_button()

    def restore_draft(self, text: str) -> None:
        """Put back a message that could not be sent, unless the user has started a new one."""
        if not self.text().strip():
            self.set_text(text)

    # --- actions --------------------------------------------------------------------------------------------
    def submit(self) -> None:
        text = self.text()
        if self._streaming or not text.strip():
            return
        self.edit.clear()
        self.sendRequested.emit(text)

    def _on_button(self) -> None:
        if self._streaming:
            self.stopRequested.emit()
        else:
            self.submit()

    def _update_button(self) -> None:
        if self._streaming:
            self.button.setText("Stop")
            self.button.setToolTip("Stop the reply (Esc); what arrived so far is kept")
            self.button.setEnabled(True)
        else:
            self.button.setText("Save && send" if self.editing_id else "Send")
            self.button.setToolTip("Send (Enter)")
            self.button.setEnabled(bool(self.text().strip()))
        self.button.setAccessibleName(self.button.text().replace("&&", "and"))
