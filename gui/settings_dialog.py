"""Settings: the model first (server, model, key, how long to wait for it), then Sync (Postgres: URL, user, password
in the keyring, sslmode, a connection test; pool size, connect timeout and driver folded away under Advanced), then
the data folder. It opens on what a new user needs first: a model to talk to.

OK validates, saves with ``save_settings`` and emits ``settingsApplied`` with the settings now in effect, so the
app applies them without a restart. Secrets go to the keyring through ``SecretStore``, never to the file.
Long operations (the connection test, the model list) run as tasks on the loop; the dialog never waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote

import shiboken6
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from chat.endpoints import PRESETS, PRESETS_BY_KEY, ModelListError, api_key_name, list_models
from chat.offload import model_thread
from gui.badge import TIER_LOOKS
from gui.tasks import TaskRunner
from storage import connection_test
from storage.connection_test import ConnectionResult
from storage.postgres_url import SSL_MODES, parse_postgres_url
from storage.secrets import SecretStore, mask_secrets, password_key
from storage.settings import SPECS_BY_KEY, Settings, SettingsError, load_settings, save_settings

log = logging.getLogger("cairn.gui")

DEFAULT_SSLMODE = "prefer"
MODEL_LIST_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------- Postgres URL


@dataclass(frozen=True)
class PostgresUrlParts:
    """A Postgres URL as the form shows it: where (``base``), who, and how (sslmode)."""

    base: str
    user: str = ""
    password: str = ""
    sslmode: str = DEFAULT_SSLMODE


def split_postgres_url(url: str) -> PostgresUrlParts:
    """Take user, password and sslmode out of a URL or key=value string; the rest stays as written."""
    url = url.strip()
    if not url:
        return PostgresUrlParts("")
    if "://" not in url:
        try:
            params = conninfo_to_dict(url)
        except Exception:  # psycopg's ProgrammingError; the form shows the text as typed and the test says why
            return PostgresUrlParts(url)
        user = str(params.pop("user", "") or "")
        password = str(params.pop("password", "") or "")
        sslmode = str(params.pop("sslmode", "") or DEFAULT_SSLMODE)
        return PostgresUrlParts(make_conninfo("", **params), user, password, sslmode)
    scheme, _, after = url.partition("://")
    end = min((i for i in (after.find(c) for c in "/?#") if i != -1), default=len(after))
    authority, rest = after[:end], after[end:]
    userinfo, at, hosts = authority.rpartition("@")
    user = password = ""
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        user, password = unquote(raw_user), unquote(raw_password) if colon else ""
    path, _, query_and_fragment = rest.partition("?")
    query, hash_mark, fragment = query_and_fragment.partition("#")
    sslmode = DEFAULT_SSLMODE
    kept: list[str] = []
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        key = unquote(name).lower()
        if key == "sslmode":
            sslmode = unquote(value)
        elif key == "user":
            user = user or unquote(value)
        elif key == "password":
            password = password or unquote(value)
        else:
            kept.append(item)
    base = f"{scheme}://{hosts}{path}" + ("?" + "&".join(kept) if kept else "") + hash_mark + fragment
    return PostgresUrlParts(base, user, password, sslmode)


def join_postgres_url(base: str, user: str, sslmode: str) -> str:
    """The URL to store: ``base`` with ``user`` and a non-default ``sslmode`` put back; never a password."""
    parts = split_postgres_url(base)
    if not parts.base:
        return ""
    user = user.strip() or parts.user
    if "://" not in parts.base:
        extra = {"user": user or None, "sslmode": sslmode if sslmode != DEFAULT_SSLMODE else None}
        try:
            return make_conninfo(parts.base, **extra)
        except Exception:
            return parts.base
    scheme, _, after = parts.base.partition("://")
    without_fragment, hash_mark, fragment = after.partition("#")
    url = f"{scheme}://" + (quote(user, safe="") + "@" if user else "") + without_fragment
    if sslmode != DEFAULT_SSLMODE:
        url += ("&" if "?" in url else "?") + f"sslmode={quote(sslmode, safe='')}"
    return url + hash_mark + fragment


# --------------------------------------------------------------------------------------------- the dialog


def _result_style(ok: bool) -> str:
    look = TIER_LOOKS["postgres" if ok else "memory"]
    return f"QLabel {{ background-color: {look.background}; color: {look.foreground}; padding: 4px 8px; }}"


class SettingsDialog(QDialog):
    """Edit and save the settings; ``settingsApplied(Settings)`` after a successful save.

    ``connectionTested(ConnectionResult)`` and ``modelsRefreshed(list[str] | str)`` (the model ids, or the error
    in words) report the outcome of the two background checks.
    """

    settingsApplied = Signal(object)
    connectionTested = Signal(object)
    modelsRefreshed = Signal(object)

    def __init__(self, settings: Settings, secrets: SecretStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.secrets = secrets
        self.applied: Settings | None = None
        self.tasks = TaskRunner(self)
        self._test_task: asyncio.Task[ConnectionResult] | None = None
        self._models_task: asyncio.Task[None] | None = None
        self.setWindowTitle("Settings")
        self.setMinimumWidth(560)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_model_tab(), "Model")
        self.tabs.addTab(self._build_postgres_tab(), "Sync")
        self.tabs.addTab(self._build_data_tab(), "Data")
        self.tabs.addTab(self._build_appearance_tab(), "Appearance")

        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.setStyleSheet(_result_style(False))
        self.error.setAccessibleName("Settings error")
        self.error.hide()

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self._on_ok)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        overridden = self._overridden_note()
        if overridden is not None:
            layout.addWidget(overridden)
        if secrets.warning:
            warning = QLabel(secrets.warning)
            warning.setWordWrap(True)
            layout.addWidget(warning)
        layout.addWidget(self.tabs)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)

        self._load(settings)

    # --- building -------------------------------------------------------------------------------------------
    def _build_postgres_tab(self) -> QWidget:
        self.use_postgres = QCheckBox("Keep conversations in Postgres too (shared between machines)")
        self.postgres_url = QLineEdit()
        self.postgres_url.setPlaceholderText("postgresql://host:5432/cairn")
        self.postgres_url.setToolTip(
            "Host, port and database. A user or password typed here moves to the fields below."
        )
        self.postgres_url.setAccessibleName("Postgres URL")
        self.postgres_url.editingFinished.connect(self._normalize_url_field)
        self.postgres_user = QLineEdit()
        self.postgres_user.setAccessibleName("Postgres user")
        self.postgres_password = QLineEdit()
        self.postgres_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.postgres_password.setAccessibleName("Postgres password")
        self.postgres_password.setToolTip("Kept in the OS keyring, never in the settings file.")
        self.sslmode = QComboBox()
        self.sslmode.addItems(SSL_MODES)
        self.sslmode.setAccessibleName("SSL mode")
        self.pool_size = QSpinBox()
        spec = SPECS_BY_KEY["POSTGRES_POOL_SIZE"]
        self.pool_size.setRange(int(spec.minimum or 1), int(spec.maximum or 100))
        self.pool_size.setAccessibleName("Pool size")
        self.connect_timeout = QDoubleSpinBox()
        spec = SPECS_BY_KEY["POSTGRES_CONNECT_TIMEOUT"]
        self.connect_timeout.setRange(spec.minimum or 0.5, spec.maximum or 120)
        self.connect_timeout.setDecimals(1)
        self.connect_timeout.setSingleStep(0.5)
        self.connect_timeout.setSuffix(" s")
        self.connect_timeout.setAccessibleName("Connect timeout")
        self.prefer_async = QCheckBox("Talk to Postgres asynchronously (recommended)")
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.start_connection_test)
        self.test_result = QLabel()
        self.test_result.setWordWrap(True)
        self.test_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.test_result.setAccessibleName("Connection test result")
        test_row = QHBoxLayout()
        test_row.addWidget(self.test_button)
        test_row.addWidget(self.test_result, 1)

        intro = QLabel(
            "Your conversations are always kept on this computer. A PostgreSQL server keeps them too, and carries "
            "them between your computers."
        )
        intro.setWordWrap(True)
        self.sync_advanced = QWidget()
        advanced_form = QFormLayout(self.sync_advanced)
        advanced_form.setContentsMargins(0, 0, 0, 0)
        advanced_form.addRow("Pool size:", self.pool_size)
        advanced_form.addRow("Connect timeout:", self.connect_timeout)
        advanced_form.addRow(self.prefer_async)
        self.advanced_button = QToolButton()
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setAutoRaise(True)
        self.advanced_button.setAccessibleName("Advanced Postgres settings")
        self.advanced_button.toggled.connect(self._show_advanced)
        self._show_advanced(False)

        page = QWidget()
        form = QFormLayout(page)
        form.addRow(intro)
        form.addRow(self.use_postgres)
        form.addRow("URL:", self.postgres_url)
        form.addRow("User:", self.postgres_user)
        form.addRow("Password:", self.postgres_password)
        form.addRow("SSL mode:", self.sslmode)
        form.addRow(test_row)
        form.addRow(self.advanced_button)
        form.addRow(self.sync_advanced)
        return page

    def _show_advanced(self, shown: bool) -> None:
        """Fold the rarely needed Postgres knobs away, or show them."""
        self.advanced_button.setChecked(shown)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.sync_advanced.setVisible(shown)

    def _build_model_tab(self) -> QWidget:
        self.preset = QComboBox()
        for preset in PRESETS:
            self.preset.addItem(preset.label, preset.key)
        self.preset.setAccessibleName("Model server preset")
        self.preset.activated.connect(self._on_preset_chosen)
        self.base_url = QLineEdit()
        self.base_url.setAccessibleName("Model server base URL")
        self.base_url.setPlaceholderText("http://localhost:11434/v1")
        self.base_url.textEdited.connect(self._on_base_url_edited)
        self.base_url.editingFinished.connect(self._load_api_key_for_base_url)
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.model.setAccessibleName("Model")
        editor = self.model.lineEdit()
        assert editor is not None  # an editable combo box has one
        editor.setPlaceholderText("the server's first model")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Ask the server which models it offers.")
        self.refresh_button.clicked.connect(self.start_models_refresh)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(self.refresh_button)
        self.models_result = QLabel()
        self.models_result.setWordWrap(True)
        self.models_result.setAccessibleName("Model list result")
        self.api_key = QLineEdit()
        self.api_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.api_key.setAccessibleName("API key")
        self.api_key.setToolTip("Kept in the OS keyring, never in the settings file. Local servers need none.")
        self._api_key_edited = False
        self.api_key.textEdited.connect(self._on_api_key_edited)
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setAccessibleName("System prompt")
        self.system_prompt.setTabChangesFocus(True)
        self.first_token_timeout = self._seconds_box(
            "MODEL_FIRST_TOKEN_TIMEOUT", "Wait for the first token",
            "How long to wait for a reply to begin. A local server may load the model first: minutes for a large one.",
        )
        self.token_timeout = self._seconds_box(
            "MODEL_TOKEN_TIMEOUT", "Wait between tokens",
            "How long a reply that has begun may pause before Cairn gives up on it.",
        )

        page = QWidget()
        form = QFormLayout(page)
        form.addRow("Server:", self.preset)
        form.addRow("Base URL:", self.base_url)
        form.addRow("Model:", model_row)
        form.addRow("", self.models_result)
        form.addRow("API key:", self.api_key)
        form.addRow("System prompt:", self.system_prompt)
        form.addRow("Wait for the first token:", self.first_token_timeout)
        form.addRow("Wait between tokens:", self.token_timeout)
        return page

    @staticmethod
    def _seconds_box(key: str, name: str, tip: str) -> QSpinBox:
        spec = SPECS_BY_KEY[key]
        box = QSpinBox()
        box.setRange(int(spec.minimum or 1), int(spec.maximum or 3600))
        box.setSuffix(" s")
        box.setAccessibleName(name)
        box.setToolTip(f"{tip} ({key})")
        return box

    def _build_data_tab(self) -> QWidget:
        self.data_dir = QLineEdit()
        self.data_dir.setReadOnly(True)
        self.data_dir.setAccessibleName("Data folder")
        self.open_folder_button = QPushButton("Open folder")
        self.open_folder_button.clicked.connect(self.open_data_folder)
        self.folder_result = QLabel()
        self.folder_result.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.data_dir, 1)
        row.addWidget(self.open_folder_button)
        page = QWidget()
        form = QFormLayout(page)
        form.addRow("Data folder:", row)
        form.addRow("", self.folder_result)
        config = QLabel(str(self.settings.settings_file))
        config.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("Settings file:", config)
        return page

    def _build_appearance_tab(self) -> QWidget:
        self.theme = QComboBox()
        self.theme.setAccessibleName("Theme")
        for label, value in (("As the desktop", "system"), ("Light", "light"), ("Dark", "dark")):
            self.theme.addItem(label, value)
        self.font_size = QSpinBox()
        self.font_size.setAccessibleName("Text size")
        self.font_size.setRange(0, 48)
        self.font_size.setSuffix(" pt")
        self.font_size.setSpecialValueText("As the desktop")  # shown for 0
        page = QWidget()
        form = QFormLayout(page)
        form.addRow("Theme:", self.theme)
        form.addRow("Text size:", self.font_size)
        return page

    def _overridden_note(self) -> QLabel | None:
        keys = sorted(k for k, source in self.settings.sources.items() if source in ("environment", ".env"))
        if not keys:
            return None
        note = QLabel(
            "Set by environment variables or .env, which take precedence over what is saved here: " + ", ".join(keys)
        )
        note.setWordWrap(True)
        return note

    # --- loading and collecting -----------------------------------------------------------------------------
    def _load(self, settings: Settings) -> None:
        parts = split_postgres_url(settings.postgres_url)
        self.use_postgres.setChecked(settings.use_postgres)
        self.postgres_url.setText(parts.base)
        self.postgres_user.setText(parts.user)
        self._set_sslmode(parts.sslmode)
        self.postgres_password.setText(parts.password or self._stored_password(self._composed_url()) or "")
        self.pool_size.setValue(settings.pool_size)
        self.connect_timeout.setValue(settings.connect_timeout)
        self.prefer_async.setChecked(settings.prefer_async_postgres)

        index = self.preset.findData(settings.model_preset)
        self.preset.setCurrentIndex(index if index >= 0 else self.preset.findData("custom"))
        self.base_url.setText(settings.model_base_url)
        self.model.setEditText(settings.model_name)
        self.api_key.setText(self.secrets.get(api_key_name(settings.model_base_url)) or "")
        self.system_prompt.setPlainText(settings.system_prompt)
        self.first_token_timeout.setValue(round(settings.model_first_token_timeout))
        self.token_timeout.setValue(round(settings.model_token_timeout))
        self.data_dir.setText(str(settings.data_dir))
        index = self.theme.findData(settings.theme)
        self.theme.setCurrentIndex(index if index >= 0 else 0)
        self.font_size.setValue(settings.font_size)

        self._initial = self.values()
        self._initial_password = (self._password_name(), self.postgres_password.text())
        self._initial_api_key = (api_key_name(settings.model_base_url), self.api_key.text())

    def _set_sslmode(self, sslmode: str) -> None:
        if self.sslmode.findText(sslmode) < 0:
            self.sslmode.addItem(sslmode)  # unknown to us: keep it, the test and the save will say what is wrong
        self.sslmode.setCurrentText(sslmode)

    def _stored_password(self, url: str) -> str | None:
        try:
            return self.secrets.get(password_key(url)) if url else None
        except ValueError:
            return None

    def _password_name(self) -> str | None:
        url = self._composed_url()
        if not url:
            return None
        try:
            return password_key(url)
        except ValueError:
            return None

    def _normalize_url_field(self) -> None:
        """A user, password or sslmode typed into the URL moves to its own field."""
        parts = split_postgres_url(self.postgres_url.text())
        if parts.base != self.postgres_url.text().strip():
            self.postgres_url.setText(parts.base)
        if parts.user and not self.postgres_user.text().strip():
            self.postgres_user.setText(parts.user)
        if parts.password:
            self.postgres_password.setText(parts.password)
        if parts.sslmode != DEFAULT_SSLMODE:
            self._set_sslmode(parts.sslmode)

    def _composed_url(self) -> str:
        return join_postgres_url(self.postgres_url.text(), self.postgres_user.text(), self.sslmode.currentText())

    def postgres_password_text(self) -> str:
        return self.postgres_password.text() or split_postgres_url(self.postgres_url.text()).password

    def values(self) -> dict[str, object]:
        """The form as settings (key -> value); secrets are not among them."""
        return {
            "POSTGRES_DATABASE_URL": self._composed_url(),
            "USE_POSTGRES_CHECKPOINTER": self.use_postgres.isChecked(),
            "PREFER_ASYNC_POSTGRES": self.prefer_async.isChecked(),
            "POSTGRES_POOL_SIZE": self.pool_size.value(),
            "POSTGRES_CONNECT_TIMEOUT": round(self.connect_timeout.value(), 1),
            "MODEL_PRESET": str(self.preset.currentData() or "custom"),
            "MODEL_BASE_URL": self.base_url.text().strip(),
            "MODEL_NAME": self.model.currentText().strip(),
            "SYSTEM_PROMPT": self.system_prompt.toPlainText(),
            "MODEL_FIRST_TOKEN_TIMEOUT": float(self.first_token_timeout.value()),
            "MODEL_TOKEN_TIMEOUT": float(self.token_timeout.value()),
            "THEME": str(self.theme.currentData() or "system"),
            "FONT_SIZE": self.font_size.value(),
        }

    # --- saving ---------------------------------------------------------------------------------------------
    def _on_ok(self) -> None:
        if self.save() is not None:
            self.accept()

    def save(self) -> Settings | None:
        """Validate and save; the settings now in effect, or None with the problem shown (the form is kept)."""
        self._normalize_url_field()
        values = self.values()
        problem = self._check(values)
        if problem is not None:
            key, message = problem
            self.show_error(message, key)
            return None
        changed = {key: value for key, value in values.items() if self._initial.get(key) != value}
        try:
            save_settings(changed, config_dir=self.settings.config_dir, secrets=self.secrets)
        except SettingsError as exc:
            self.show_error(str(exc), str(exc).split("=", 1)[0].split(":", 1)[0])
            return None
        except OSError as exc:
            self.show_error(f"Cannot write {self.settings.settings_file}: {exc.strerror or exc}")
            return None
        self._save_secrets(values)
        self.applied = load_settings(config_dir=self.settings.config_dir, strict=False)
        self._initial = values
        self.error.hide()
        self.settingsApplied.emit(self.applied)
        return self.applied

    def _check(self, values: dict[str, object]) -> tuple[str, str] | None:
        url = str(values["POSTGRES_DATABASE_URL"])
        if url:
            try:
                parse_postgres_url(url)
            except ValueError as exc:
                return "POSTGRES_DATABASE_URL", f"Postgres URL: not a valid PostgreSQL URL ({exc})"
        base_url = str(values["MODEL_BASE_URL"])
        if not base_url.lower().startswith(("http://", "https://")):
            return "MODEL_BASE_URL", "Model base URL: expected an http:// or https:// address"
        return None

    def _save_secrets(self, values: dict[str, object]) -> None:
        name = self._password_name()
        password = self.postgres_password_text()
        if name is not None and (name, password) != self._initial_password:
            if password:
                self.secrets.set(name, password)
            elif self.secrets.get(name) is not None:
                self.secrets.delete(name)
        self._initial_password = (name, password)
        key_name = api_key_name(str(values["MODEL_BASE_URL"]))
        key = self.api_key.text().strip()
        if (key_name, key) != self._initial_api_key:
            if key:
                self.secrets.set(key_name, key)
            elif self.secrets.get(key_name) is not None:
                self.secrets.delete(key_name)
        self._initial_api_key = (key_name, key)

    _FIELDS_BY_KEY: ClassVar[dict[str, tuple[str, int]]] = {
        "MODEL_PRESET": ("preset", 0),
        "MODEL_BASE_URL": ("base_url", 0),
        "MODEL_NAME": ("model", 0),
        "SYSTEM_PROMPT": ("system_prompt", 0),
        "MODEL_FIRST_TOKEN_TIMEOUT": ("first_token_timeout", 0),
        "MODEL_TOKEN_TIMEOUT": ("token_timeout", 0),
        "POSTGRES_DATABASE_URL": ("postgres_url", 1),
        "USE_POSTGRES_CHECKPOINTER": ("use_postgres", 1),
        "PREFER_ASYNC_POSTGRES": ("prefer_async", 1),
        "POSTGRES_POOL_SIZE": ("pool_size", 1),
        "POSTGRES_CONNECT_TIMEOUT": ("connect_timeout", 1),
    }

    def show_error(self, message: str, key: str | None = None) -> None:
        """Show ``message`` under the form and take the user to the field it is about."""
        self.error.setText(mask_secrets(message))
        self.error.show()
        field = self._FIELDS_BY_KEY.get(key or "")
        if field is not None:
            name, tab = field
            self.tabs.setCurrentIndex(tab)
            widget = getattr(self, name)
            if self.sync_advanced.isAncestorOf(widget):
                self._show_advanced(True)
            widget.setFocus(Qt.FocusReason.OtherFocusReason)

    # --- model endpoint -------------------------------------------------------------------------------------
    def _on_preset_chosen(self, index: int) -> None:
        preset = PRESETS_BY_KEY.get(str(self.preset.itemData(index)))
        if preset is not None and preset.base_url:
            self.base_url.setText(preset.base_url)
            self._load_api_key_for_base_url()

    def _on_api_key_edited(self) -> None:
        self._api_key_edited = True

    def _load_api_key_for_base_url(self) -> None:
        """Show the key kept for the server now chosen: one server's key must not follow the user to another."""
        if self._api_key_edited:
            return  # typed for this server by the user: keep it
        self.api_key.setText(self.secrets.get(api_key_name(self.base_url.text().strip())) or "")

    def _on_base_url_edited(self, text: str) -> None:
        url = text.strip().rstrip("/")
        match = next((p for p in PRESETS if p.base_url and p.base_url.rstrip("/") == url), None)
        self.preset.setCurrentIndex(self.preset.findData(match.key if match else "custom"))

    def start_models_refresh(self) -> None:
        """Fill the model list from ``GET {base_url}/models`` in the background."""
        if self._models_task is not None and not self._models_task.done():
            return
        base_url = self.base_url.text().strip()
        if not base_url.lower().startswith(("http://", "https://")):
            self._show_models_error("Enter the server's base URL first (http://… or https://…)")
            return
        self.refresh_button.setEnabled(False)
        self.models_result.setStyleSheet("")
        self.models_result.setText(f"Asking {base_url} for its models…")
        self._models_task = self._spawn(
            self._refresh_models(base_url, self.api_key.text().strip() or None), "Listing the models"
        )

    async def _refresh_models(self, base_url: str, api_key: str | None) -> None:
        try:
            # On the model thread's loop: building an httpx client loads an SSL context synchronously (30-60 ms here,
            # more on a busy machine), which would stall the GUI loop; closing the dialog cancels the request.
            models = await model_thread().run(list_models(base_url, api_key, timeout=MODEL_LIST_TIMEOUT))
        except ModelListError as exc:
            self.refresh_button.setEnabled(True)
            self._show_models_error(mask_secrets(str(exc)))
            return
        self.refresh_button.setEnabled(True)
        current = self.model.currentText()
        self.model.clear()
        self.model.addItems(models)
        self.model.setEditText(current or (models[0] if models else ""))
        self.models_result.setStyleSheet("")
        self.models_result.setText(f"{len(models)} model(s) on this server" if models else "The server lists no models")
        self.modelsRefreshed.emit(models)

    def _show_models_error(self, message: str) -> None:
        self.models_result.setStyleSheet(_result_style(False))
        self.models_result.setText(message)
        self.modelsRefreshed.emit(message)

    # --- connection test ------------------------------------------------------------------------------------
    def start_connection_test(self) -> None:
        """Connect with what the form says now, in the background; the result appears beside the button."""
        if self._test_task is not None and not self._test_task.done():
            return
        self._normalize_url_field()
        url = self._composed_url()
        timeout = round(self.connect_timeout.value(), 1)
        try:
            where = parse_postgres_url(url).address
        except ValueError:
            where = "the server"
        self.test_button.setEnabled(False)
        self.test_result.setStyleSheet("")
        self.test_result.setText(f"Connecting to {where} (at most {timeout:g} s)…")
        self._test_task = self._spawn(
            self._run_connection_test(url, self.postgres_password_text() or None, timeout), "Testing the connection"
        )

    async def _run_connection_test(self, url: str, password: str | None, timeout: float) -> ConnectionResult:
        result = await connection_test.test_connection(url, password, timeout)
        self.test_button.setEnabled(True)
        self.test_result.setStyleSheet(_result_style(result.ok))
        self.test_result.setText(result.message)
        self.connectionTested.emit(result)
        return result

    # --- data folder ----------------------------------------------------------------------------------------
    def open_data_folder(self) -> bool:
        path = Path(self.data_dir.text())
        with contextlib.suppress(OSError):
            path.mkdir(parents=True, exist_ok=True)  # the app creates it at start anyway; a file manager needs it now
        opened = QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
        self.folder_result.setText("" if opened else f"Could not open {path} in the file manager.")
        return opened

    # --- tasks ----------------------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        task = self.tasks.spawn(coro, what)  # which logs a failure with its traceback
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, _task: asyncio.Task[Any]) -> None:
        # Here rather than in the coroutine: a task cancelled before its first step never runs its own code.
        if shiboken6.isValid(self):
            self.test_button.setEnabled(self._test_task is None or self._test_task.done())
            self.refresh_button.setEnabled(self._models_task is None or self._models_task.done())

    def done(self, result: int) -> None:
        # Closing the dialog ends its checks: their results would land in a form nobody looks at.
        self.tasks.cancel_all()
        super().done(result)
