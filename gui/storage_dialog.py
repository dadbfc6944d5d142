"""Storage details (the badge's click: what ``doctor`` says, live), the red "nothing is saved" banner, and the question
Quit asks when conversations would be lost."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from gui.badge import TIER_LOOKS, look_of
from gui.bridge import StorageBridge
from storage.doctor import report_text, status_text
from storage.secrets import SecretStore
from storage.settings import Settings
from storage.status import StorageStatus

TIER_TITLES = {"postgres": "Postgres", "sqlite": "Local (SQLite)", "memory": "Memory"}


def _detail_text(detail: dict[str, Any]) -> str:
    parts = []
    for key, value in detail.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def status_report(status: StorageStatus) -> str:
    """The storage half of the doctor's text, for when the settings are not at hand."""
    return status_text(status, status.keyring or "unknown")


class StorageDetailsDialog(QDialog):
    """Where the words are and why, in plain words on top; below, folded under "Technical details", each tier's
    state and reason (exception names included), pending sync, pool stats and keyring. Updates live.

    With ``settings`` and ``secrets`` the report below is exactly ``python main.py doctor``'s text. While nothing is
    saved, "Choose another data folder…" (``chooseFolderRequested``).
    """

    chooseFolderRequested = Signal()

    def __init__(
        self,
        bridge: StorageBridge,
        settings: Settings | None = None,
        secrets: SecretStore | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.settings = settings
        self.secrets = secrets
        self.setWindowTitle("Storage")
        self.setMinimumWidth(620)

        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setAccessibleName("Active storage")
        self.summary.setTextFormat(Qt.TextFormat.RichText)

        self.technical_button = QToolButton()
        self.technical_button.setText("Technical details")
        self.technical_button.setCheckable(True)
        self.technical_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.technical_button.setArrowType(Qt.ArrowType.RightArrow)
        self.technical_button.setAutoRaise(True)
        self.technical_button.toggled.connect(self.show_technical)
        self.technical = QWidget()
        self.technical.setAccessibleName("Technical details")

        self.tiers = QTableWidget(0, 3)
        self.tiers.setHorizontalHeaderLabels(["Tier", "State", "Reason and details"])
        self.tiers.verticalHeader().setVisible(False)
        self.tiers.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.tiers.setWordWrap(True)
        header = self.tiers.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.tiers.setAccessibleName("Storage tiers")

        self.pending = QLabel()
        self.postgres_url = QLabel()
        self.data_dir = QLabel()
        self.keyring = QLabel()
        self.sync_error = QLabel()
        for label in (self.pending, self.postgres_url, self.data_dir, self.keyring, self.sync_error):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        facts = QFormLayout()
        facts.addRow("Pending sync:", self.pending)
        facts.addRow("Postgres URL:", self.postgres_url)
        facts.addRow("Data folder:", self.data_dir)
        facts.addRow("Keyring:", self.keyring)
        facts.addRow("Last sync error:", self.sync_error)

        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.report.setAccessibleName("Full report")
        self.report.setMinimumHeight(160)

        self.retry_button = QPushButton("Retry now")
        self.retry_button.setToolTip("Try to reach Postgres again now instead of waiting for the next attempt.")
        self.retry_button.clicked.connect(self.retry_now)
        self.copy_button = QPushButton("Copy report")
        self.copy_button.clicked.connect(self.copy_report)
        self.folder_button = QPushButton("Choose another data folder…")
        self.folder_button.setToolTip("Save in another folder, starting with what was written while nothing was saved.")
        self.folder_button.clicked.connect(self.chooseFolderRequested)
        self.retry_note = QLabel()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.retry_button)
        row.addWidget(self.copy_button)
        row.addWidget(self.folder_button)
        row.addWidget(self.retry_note, 1)
        row.addWidget(buttons)

        technical = QVBoxLayout(self.technical)
        technical.setContentsMargins(0, 0, 0, 0)
        technical.addWidget(self.tiers)
        technical.addLayout(facts)
        technical.addWidget(self.report, 1)
        self.technical.hide()

        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.technical_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.technical, 1)
        layout.addLayout(row)

        self._status: StorageStatus | None = None
        bridge.statusChanged.connect(self.show_status)
        self.show_status(bridge.status())

    def status(self) -> StorageStatus | None:
        return self._status

    def show_technical(self, shown: bool) -> None:
        self.technical_button.setChecked(shown)
        self.technical_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.technical.setVisible(shown)
        self.adjustSize()

    def headline(self) -> str:
        """The plain words on top, as text (the label holds them as rich text)."""
        return self.summary.text().replace("<b>", "").replace("</b>", "").replace("<br>", "\n")

    def report_text(self) -> str:
        if self._status is None:
            return ""
        if self.settings is not None and self.secrets is not None:
            return report_text(self.settings, self.secrets, self._status)
        return status_report(self._status)

    def show_status(self, status: StorageStatus) -> None:
        self._status = status
        look = look_of(status)
        lines = [f"<b>{html.escape(look.headline, quote=False)}</b>"]
        if status.cause:
            lines.append(html.escape(status.cause, quote=False) + ".")
        if status.pending_sync:
            lines.append(f"Waiting to be copied to the server: {html.escape(status.pending_words, quote=False)}.")
        if status.active_tier == "sqlite" and status.server_configured:
            lines.append("Cairn keeps trying by itself; nothing you write is lost.")
        self.summary.setText("<br>".join(lines))
        self.folder_button.setVisible(status.active_tier == "memory")
        self.tiers.setRowCount(len(status.tiers))
        for row, (name, tier) in enumerate(status.tiers.items()):
            title = TIER_TITLES.get(name, name) + ("  ◀ active" if name == status.active_tier else "")
            reason = tier.reason
            detail = _detail_text(tier.detail)
            text = f"{reason}\n{detail}" if reason and detail else reason or detail
            for column, value in enumerate((title, tier.state, text)):
                item = QTableWidgetItem(value)
                item.setToolTip(value)
                self.tiers.setItem(row, column, item)
        self.tiers.resizeRowsToContents()
        self.pending.setText(f"{status.pending_words} not yet in Postgres")
        self.postgres_url.setText(status.postgres_url or "not configured")
        self.data_dir.setText(status.data_dir or "none")
        keyring = self.secrets.backend_name if self.secrets is not None else status.keyring
        warning = self.secrets.warning if self.secrets is not None else None
        self.keyring.setText((keyring or "unknown") + (f" ({warning})" if warning else ""))
        self.sync_error.setText(status.last_sync_error or "none")
        postgres = status.tiers.get("postgres")
        # In every state of a configured Postgres, "failed" included: a grant, a new database or a fixed server
        # can make the next attempt work, and the user is the one who knows when.
        configured = bool(status.postgres_url) and postgres is not None and postgres.state != "off"
        self.retry_button.setEnabled(configured)
        self.retry_button.setToolTip(
            "Try to reach Postgres again now instead of waiting for the next attempt."
            if configured
            else "No Postgres URL is configured (or Postgres is switched off)."
        )
        self.retry_note.setText("")
        scroll = self.report.verticalScrollBar().value()
        self.report.setPlainText(self.report_text())
        self.report.verticalScrollBar().setValue(scroll)

    def retry_now(self) -> None:
        self.bridge.retry_now()
        self.retry_note.setText("Trying Postgres again…")

    def copy_report(self) -> None:
        QGuiApplication.clipboard().setText(self.report_text())


class MemoryBanner(QWidget):
    """A red strip above the conversation while nothing is saved; "Export…" offers to keep the words."""

    exportRequested = Signal()
    chooseFolderRequested = Signal()

    def __init__(self, bridge: StorageBridge | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        look = TIER_LOOKS["memory"]
        self.setObjectName("memoryBanner")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setStyleSheet(
            f"QWidget#memoryBanner {{ background-color: {look.background}; }}"
            f"QWidget#memoryBanner QLabel {{ color: {look.foreground}; font-weight: 600; }}"
        )
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.PlainText)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the open conversations to a file before quitting.")
        self.export_button.clicked.connect(self.exportRequested)
        self.folder_button = QPushButton("Choose another folder…")
        self.folder_button.setToolTip(
            "Save in another folder from now on, starting with everything written while nothing was saved."
        )
        self.folder_button.clicked.connect(self.chooseFolderRequested)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.addWidget(self.message, 1)
        layout.addWidget(self.export_button)
        layout.addWidget(self.folder_button)
        self.setAccessibleName("Nothing is being saved")
        self.hide()
        if bridge is not None:
            bridge.statusChanged.connect(self.show_status)
            self.show_status(bridge.status())

    def show_status(self, status: StorageStatus) -> None:
        memory = status.active_tier == "memory"
        if memory:
            self.message.setText(f"Nothing is being saved. {status.cause}.")
            self.setAccessibleDescription(self.message.text())
        self.setVisible(memory)


class QuitWarning(QMessageBox):
    """Quit while conversations live only in memory: Export… (the export flow; nothing quits), Quit anyway, Cancel.

    Opened with ``open()`` (never ``exec()``: no nested event loop inside the app's coroutines)."""

    def __init__(self, conversations: int, reason: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("quitWarning")
        self.setIcon(QMessageBox.Icon.Warning)
        self.setWindowTitle("Quit Cairn?")
        some = "1 conversation is" if conversations == 1 else f"{conversations} conversations are"
        self.setText(f"{some} not saved anywhere.")
        self.setInformativeText(
            "Cairn could not write to the data folder or to Postgres, so they live only in memory and are lost when "
            "Cairn quits. Export what you want to keep first."
        )
        if reason:
            self.setDetailedText(reason)
        self.export_button = self.addButton("Export…", QMessageBox.ButtonRole.ActionRole)
        self.quit_button = self.addButton("Quit anyway", QMessageBox.ButtonRole.DestructiveRole)
        self.cancel_button = self.addButton(QMessageBox.StandardButton.Cancel)
        self.setDefaultButton(self.cancel_button)
        self.setEscapeButton(self.cancel_button)

