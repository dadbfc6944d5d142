"""The storage badge: where the user's words are saved right now, in a word and a colour."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QPushButton, QWidget

from gui.bridge import StorageBridge
from storage.status import StorageStatus, TierName


@dataclass(frozen=True)
class TierLook:
    label: str
    headline: str
    background: str
    foreground: str


# Fixed background and text colours, each pair with a contrast ratio above 4.5 (WCAG AA): the badge reads the
# same on a light or a dark palette because it takes neither colour from the palette.
TIER_LOOKS: dict[TierName, TierLook] = {
    "postgres": TierLook("Postgres", "Saved to Postgres", "#1b6e34", "#ffffff"),
    "sqlite": TierLook("Local", "Saved on this computer only", "#f2c14e", "#1f1f1f"),
    "memory": TierLook("Not saved", "Nothing is being saved", "#b3261e", "#ffffff"),
}


ONLY_ON_SERVER = TierLook(
    "Only on the server", "Saved to Postgres only: this computer keeps no copy", "#f2c14e", "#1f1f1f"
)


def look_of(status: StorageStatus) -> TierLook:
    if status.active_tier == "postgres" and status.local_failed:
        return ONLY_ON_SERVER
    return TIER_LOOKS[status.active_tier]


def badge_text(status: StorageStatus) -> str:
    look = look_of(status)
    if status.pending_sync > 0 and status.active_tier == "postgres":
        return f"{look.label} · syncing {status.pending_sync}"
    if status.pending_sync > 0 and status.active_tier == "sqlite":
        return f"{look.label} · {status.pending_sync} to sync"
    return look.label


def badge_tooltip(status: StorageStatus) -> str:
    look = look_of(status)
    lines = [look.headline, f"Why: {status.reason}"]
    if status.pending_sync:
        lines.append(f"Waiting to be copied to Postgres: {status.pending_words}")
    lines.append(f"Postgres: {status.postgres_url or 'not configured'}")  # already masked by the manager
    lines.append(f"Data folder: {status.data_dir or 'none'}")
    if status.last_sync_error:
        lines.append(f"Last sync error: {status.last_sync_error}")
    lines.append("Click for details.")
    return "\n".join(lines)


class StatusBadge(QPushButton):
    """Shows the active storage tier; a click asks for the details (``detailsRequested``)."""

    detailsRequested = Signal()

    def __init__(self, bridge: StorageBridge | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._status: StorageStatus | None = None
        self.setObjectName("storageBadge")
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.clicked.connect(self.detailsRequested)
        self.show_status(None)
        if bridge is not None:
            bridge.statusChanged.connect(self.show_status)
            self.show_status(bridge.status())

    def status(self) -> StorageStatus | None:
        return self._status

    def colors(self) -> tuple[QColor, QColor]:
        """(background, text) as drawn now."""
        if self._status is None:
            palette = self.palette()
            return palette.color(palette.ColorRole.Button), palette.color(palette.ColorRole.ButtonText)
        look = look_of(self._status)
        return QColor(look.background), QColor(look.foreground)

    def show_status(self, status: StorageStatus | None) -> None:
        self._status = status
        if status is None:
            self.setText("Storage…")
            self.setToolTip("Storage is starting.")
            self.setStyleSheet("")
            self.setAccessibleName("Storage: starting")
            self.setAccessibleDescription("Storage is starting.")
            return
        look = look_of(status)
        text = badge_text(status)
        tooltip = badge_tooltip(status)
        self.setText(text)
        self.setToolTip(tooltip)
        self.setAccessibleName(f"Storage: {text}")
        self.setAccessibleDescription(tooltip)
        self.setStyleSheet(
            f"QPushButton#storageBadge {{ background-color: {look.background}; color: {look.foreground};"
            " border: none; border-radius: 9px; padding: 2px 10px; font-weight: 600; }"
            f"QPushButton#storageBadge:focus {{ outline: none; border: 2px solid {look.foreground}; }}"
        )
