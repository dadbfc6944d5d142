"""The note above the conversation that makes other versions known where the switchers beside the messages
("‹ 2 / 3 ›") would not: one that arrived from another device while the conversation was open, or one parting from
it above its last exchange (docs/DESIGN.md, "Branches and versions"). An edit or a regenerate of the last exchange
gets no note: its switcher is right there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

if TYPE_CHECKING:
    from chat.service import ConversationView as Loaded

ARRIVED = (
    "Another version of this conversation arrived from a device that continued it at the same time: ‹ › beside the "
    "message where they part switches between them. Both are kept."
)
EARLIER = (
    "An earlier message has other versions (edited, regenerated, or continued on two devices at once): ‹ › beside "
    "it switches between them."
)


class BranchNote(QWidget):
    showRequested = Signal(int)
    """"Show it": the index of the first message with other versions."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("branchNote")
        self._parting = -1
        self._arrived: str | None = None  # the conversation shown, once another device's version arrived in it
        self._shown: tuple[str, int] = ("", 0)  # the conversation shown, and how many other versions it has
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 4, 10, 4)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.button = QPushButton("Show it")
        self.button.setObjectName("branchShow")
        self.button.setToolTip("Scroll to the message where the versions part")
        self.button.clicked.connect(lambda: self.showRequested.emit(self._parting))
        row.addWidget(self.label, 1)
        row.addWidget(self.button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.hide()

    def text(self) -> str:
        return self.label.text()

    def opened(self) -> None:
        """A conversation was opened (another, or the same again): an arrival announced before is old news."""
        self._arrived = None

    def show_for(self, loaded: Loaded, *, live: bool = False) -> None:
        """Show or hide the note for the conversation as loaded; ``live``: the window is following a change made
        elsewhere (more versions than shown until now arrived from another device)."""
        before, self._shown = self._shown, (loaded.thread_id, loaded.other_branches)
        if live and before[0] == loaded.thread_id and loaded.other_branches > before[1]:
            self._arrived = loaded.thread_id
        parting = next((i for i, m in enumerate(loaded.messages) if m.id in loaded.versions), -1)
        arrived = self._arrived == loaded.thread_id
        if parting < 0 or (not arrived and parting >= len(loaded.messages) - 2):
            self.hide()
            return
        self._parting = parting
        self.label.setText(ARRIVED if arrived else EARLIER)
        self.show()
