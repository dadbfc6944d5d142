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
    """The badge's words."""
    headline: str
    """The first line of its tooltip and of the storage details: where the words are, in a sentence."""
    background: str
    foreground: str


# Fixed background and text colours, each pair with a contrast ratio above 4.5 (WCAG AA): the badge reads the
# same on a light or a dark palette because it takes neither colour from the palette. Green: synced; a calm blue for
# the normal state of a computer that keeps its words to itself; amber: a server is set up but not in use; red:
# nothing is saved.
GREEN = ("#1b6e34", "#ffffff")
CALM = ("#35618f", "#ffffff")
AMBER = ("#f2c14e", "#1f1f1f")
RED = ("#b3261e", "#ffffff")

TIER_LOOKS: dict[TierName, TierLook] = {
    "postgres": TierLook("Synced", "Saved on this computer and on the server", *GREEN),
    "sqlite": TierLook("Saved on this computer", "Saved on this computer", *CALM),
    "memory": TierLook("Not saved", "Nothing is being saved", *RED),
}
"""Each tier's look in its plainest state (the colours other widgets borrow); ``look_of`` gives the words."""


def look_of(status: StorageStatus) -> TierLook:
    """The badge's words, headline and colours for ``status``."""
    host = status.host or "the server"
    pending = status.pending_sync
    if status.active_tier == "memory":
        return TIER_LOOKS["memory"]
    if status.active_tier == "postgres":
        if status.local_failed:
            return TierLook(
                f"Only on the server · {host}", f"Saved on {host} only: this computer keeps no copy", *AMBER
            )
        if pending:
            return TierLook(f"Syncing {pending} · {host}", f"Saved on this computer; copying to {host}", *GREEN)
        return TierLook(f"Synced · {host}", f"Saved on this computer and on {host}", *GREEN)
    if not status.server_configured:
        return TIER_LOOKS["sqlite"]
    waiting = f"{pending} waiting to sync" if pending else ""
    postgres = status.tiers.get("postgres")
    if postgres is not None and postgres.state == "connecting":
        # Every start passes through here for a moment: the normal state, not a warning.
        return TierLook(
            f"On this computer · {waiting or 'connecting…'}", f"Saved on this computer; connecting to {host}", *CALM
        )
    return TierLook(
        f"On this computer · {waiting or 'not synced'}", f"Saved on this computer only, not on {host}", *AMBER
    )


def badge_text(status: StorageStatus) -> str:
    return look_of(status).label


def badge_tooltip(status: StorageStatus) -> str:
    """The headline, the cause in plain words, what waits; the technical words are in the details (a click)."""
    look = look_of(status)
    lines = [look.headline]
    if status.cause:
        lines.append(status.cause + ".")
    if status.pending_sync:
        lines.append(f"Waiting to be copied to the server: {status.pending_words}.")
    if status.active_tier == "sqlite" and status.server_configured:
        lines.append("Cairn keeps trying by itself; nothing you write is lost.")
    lines.append(f"Data folder: {status.data_dir or 'none'}")
    if status.last_sync_error:
        lines.append("The last sync failed (the details say why).")
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
