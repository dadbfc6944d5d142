"""Ask for the Postgres password when storage needs one the keyring cannot give.

Shown by the app (``gui.app.CairnApp``) when the Postgres URL names a user, no keyring is available and no password
is known for this session, or when the server refuses the login for want of the right password. It only asks:
``passwordEntered(str)`` carries the answer, and the app keeps it (``SecretStore``) and reconnects. Opened with
``open()``, never ``exec()``: storage keeps running meanwhile (see gui/tasks.py).
"""

from __future__ import annotations

import getpass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from storage.postgres_url import parse_postgres_url
from storage.secrets import url_user


def _where(url: str) -> str:
    """host:port/database as the user wrote them; the URL has no password (the stored one never does)."""
    try:
        return parse_postgres_url(url).where
    except ValueError:  # storage would have refused such a URL before asking
        return "the Postgres server"


def _login_name() -> str:
    """The user libpq logs in as when the URL names none: this computer's login name."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        return "your user"


class PostgresPasswordDialog(QDialog):
    """One password field for the Postgres user of ``url``; ``passwordEntered(str)`` on OK."""

    passwordEntered = Signal(str)

    def __init__(self, url: str, *, persistent: bool, refused: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.url = url
        self.setWindowTitle("Postgres password")
        self.setObjectName("postgresPasswordDialog")
        user = url_user(url) or _login_name()
        if refused:
            why = f"The server at {_where(url)} refused the login of “{user}”: it needs the right password."
        else:
            why = f"Cairn needs the password of “{user}” to keep your conversations in Postgres at {_where(url)}."
        kept = (
            "It will be kept in your system's keyring."
            if persistent
            else "No system keyring is available: it is kept in memory until Cairn quits, never in a file."
        )
        self.message = QLabel(f"{why}\n{kept}\nUntil then, conversations are saved on this computer.")
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.PlainText)
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setAccessibleName("Postgres password")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Connect")
        self.buttons.accepted.connect(self._on_ok)
        self.buttons.rejected.connect(self.reject)
        self.password.textChanged.connect(self._update_ok)
        form = QFormLayout()
        form.addRow(f"Password for {user}:", self.password)
        layout = QVBoxLayout(self)
        layout.addWidget(self.message)
        layout.addLayout(form)
        layout.addWidget(self.buttons)
        self._update_ok()

    def _update_ok(self) -> None:
        # An empty password is what storage already tried: OK would only repeat the refusal.
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(bool(self.password.text()))

    def _on_ok(self) -> None:
        text = self.password.text()
        if not text:
            return
        self.accept()
        self.passwordEntered.emit(text)
