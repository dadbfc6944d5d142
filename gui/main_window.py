"""The main window: the conversation list, the open conversation, the composer, and the storage badge.

The window talks to conversations only through ``chat.service.ConversationService`` (attached once the chat engine
has loaded, a moment after the window is shown) and to storage only through ``storage.factory.Storage`` and the
``StorageBridge``. Every user action is a slot that returns at once; the work runs as a task (``gui.tasks``).
A reply streams per conversation: switching conversations while one streams is fine, and each failure stays with its
conversation, shown under the user's message with a Retry.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shiboken6
from PySide6.QtCore import QByteArray, QEvent, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeyEvent, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from chat.events import ReplyDone, ReplyFailed, Thinking, Token
from gui.badge import StatusBadge
from gui.branch_note import BranchNote
from gui.bridge import StorageBridge
from gui.composer import Composer
from gui.contrast import keep_readable
from gui.conversation.view import QuickChatView
from gui.sidebar import TITLE_ROLE, Sidebar
from gui.storage_dialog import MemoryBanner, QuitWarning, StorageDetailsDialog
from gui.tasks import TaskRunner
from storage.secrets import SecretStore
from storage.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from chat.events import ChatEvent
    from chat.service import ConversationService, Usage
    from gui.model_picker import ModelMenu
    from storage.changes import Changes
    from storage.factory import Storage

log = logging.getLogger("cairn.gui")

APP_TITLE = "Cairn"
LIST_REFRESH_MS = 60
STATUS_MESSAGE_MS = 5000
NOTICE_MS = 20_000


@dataclass(frozen=True)
class Shown:
    """A message as the view shows it before the service has stored it (its id is provisional)."""

    id: str
    role: str
    text: str
    stopped: bool = False


@dataclass
class Run:
    """A reply streaming in one conversation."""

    thread_id: str
    parts: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    """When the reply was asked for: the view counts the wait for its first word from here."""

    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True)
class Failure:
    message: str
    kind: str
    partial: str = ""
    retry_at: float | None = None
    """When (``time.monotonic()``) the server said a retry may come (a rate limit's wait), if it said."""


class MainWindow(QMainWindow):
    settingsApplied = Signal(object)  # the Settings now in effect (the app decides what must be reopened)
    replyFinished = Signal(str)  # thread id, after the view and the list are up to date
    conversationShown = Signal(str)  # thread id ("" for a new conversation)
    listRefreshed = Signal()

    def __init__(
        self, settings: Settings, secrets: SecretStore, state: QSettings, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.settings = settings
        self.secrets = secrets
        self.state = state
        self.storage: Storage | None = None
        self.service: ConversationService | None = None
        self.bridge: StorageBridge | None = None
        self.current: str | None = None
        self.tasks = TaskRunner(self)
        self.tasks.failed.connect(self._on_task_failed)
        self._service_ready = asyncio.Event()
        self._runs: dict[str, Run] = {}
        self._failures: dict[str, Failure] = {}
        self._drafts: dict[str | None, str] = {}
        # thread -> the checkpoint its view shows: a message sent from the view continues it, even when a turn from
        # another device (a branch taken apart) became the thread's newest meanwhile.
        self._shown_at: dict[str, str] = {}
        self._notice_shown = ""
        self._query = ""
        self._list_generation = 0
        self._list_applied = 0
        self._load_generation = 0
        self._pending_counter = 0
        self._early: list[Shown] = []  # messages sent before the chat engine loaded, in order
        self.details_dialog: StorageDetailsDialog | None = None
        self.quit_warning: QuitWarning | None = None
        self._close_confirmed = False  # Quit anyway was chosen, or the app is quitting: close without asking
        self.settings_dialog: QWidget | None = None
        self.model_menu: ModelMenu | None = None
        self._thread_models: dict[str, str] = {}  # thread id -> its chosen model ("" = the default), as known here
        self._new_chat_model = ""  # chosen for the new conversation: stored with it at its first send
        self._model_writes: dict[str, asyncio.Task[None]] = {}  # a choice being stored, per thread
        self._model_fresh_after: dict[str, float] = {}  # list refreshes up to this generation may predate a choice
        self.last_open_timing: tuple[float, float] = (0.0, 0.0)  # (load ms, render ms) of the last open

        self.setWindowTitle(APP_TITLE)
        self.setObjectName("mainWindow")
        self.sidebar = Sidebar()
        self.view = QuickChatView(defer_scene=True)  # the scene is made after the first paint (gui/app.py)
        self.composer = Composer()
        self.banner = MemoryBanner()
        right = QWidget()
        right.setObjectName("conversationPane")
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.banner)
        self.branch_note = BranchNote()
        self.branch_note.showRequested.connect(self.view.show_message)
        column.addWidget(self.branch_note)
        column.addWidget(self.view, 1)
        column.addWidget(self.composer)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(self.sidebar)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([260, 740])
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)

        self.badge = StatusBadge()
        self.model_label = QLabel()
        self.model_label.setObjectName("modelLabel")
        self.model_label.setTextFormat(Qt.TextFormat.RichText)
        self.model_label.linkActivated.connect(lambda _link: self.open_model_menu())
        self.usage_label = QLabel()
        self.usage_label.setObjectName("usageLabel")
        self.usage_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)  # muted, and readable (gui/contrast.py)
        self.statusBar().addPermanentWidget(self.usage_label)
        self.statusBar().addPermanentWidget(self.model_label)
        self.statusBar().addPermanentWidget(self.badge)
        self._show_model()

        self._list_timer = QTimer(self)
        self._list_timer.setSingleShot(True)
        self._list_timer.timeout.connect(lambda: self.tasks.spawn(self.refresh_list(), "Listing the conversations"))
        self._build_actions()
        self._connect()
        self.resize(1100, 760)
        self.view.show_note("Loading…")
        self.composer.edit.setFocus()
        keep_readable(QApplication.instance())  # type: ignore[arg-type]  # every text at 4.5:1 (gui/contrast.py)

    # --- construction ---------------------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        # A new application palette (a switch to a dark theme) reaches the window as a PaletteChange.
        if event.type() == QEvent.Type.PaletteChange:
            keep_readable(QApplication.instance())  # type: ignore[arg-type]
            self.model_label.clear()  # a label's link takes the application's link colour when its text is set anew
            self._show_model()

    def _action(self, text: str, slot: Any, shortcut: str | QKeySequence | None = None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            action.setStatusTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)  # shortcuts work even where the menu bar is hidden
        return action

    def _build_actions(self) -> None:
        self.new_action = self._action("&New chat", self.new_chat, "Ctrl+N", "Start a new conversation")
        self.search_action = self._action("&Search conversations", self.focus_search, "Ctrl+K")
        self.settings_action = self._action("S&ettings…", self.open_settings, "Ctrl+,")
        self.settings_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.copy_action = self._action("Copy last &reply", self.copy_last_reply, "Ctrl+Shift+C")
        self.model_action = self._action(
            "&Model…", self.open_model_menu, "Ctrl+M", "Choose the model that answers in this conversation"
        )
        # Esc is handled in keyPressEvent so an open editor (a rename, a dialog) still gets it first.
        self.stop_action = self._action("S&top reply\tEsc", self.stop_reply)
        self.regenerate_action = self._action("Re&generate reply", self.regenerate)
        self.retry_action = self._action("&Retry", self.retry)
        self.export_md_action = self._action("Export as &Markdown…", lambda: self.ask_export(self.current, "markdown"))
        self.export_json_action = self._action("Export as &JSON…", lambda: self.ask_export(self.current, "json"))
        self.sidebar_action = self._action("Show &sidebar", self.toggle_sidebar, "Ctrl+B")
        self.sidebar_action.setCheckable(True)
        self.sidebar_action.setChecked(True)
        self.next_action = self._action("&Next conversation", lambda: self.sidebar.step(1))
        self.next_action.setShortcuts([QKeySequence("Ctrl+PgDown"), QKeySequence("Ctrl+Tab")])
        self.previous_action = self._action("&Previous conversation", lambda: self.sidebar.step(-1))
        self.previous_action.setShortcuts(
            [QKeySequence("Ctrl+PgUp"), QKeySequence("Ctrl+Shift+Tab"), QKeySequence("Ctrl+Shift+Backtab")]
        )
        self.quit_action = self._action("&Quit", self.close)
        # The platform's Quit keys (Cmd+Q, Ctrl+Q); Windows and the offscreen platform have none: Ctrl+Q there.
        self.quit_action.setShortcuts(
            QKeySequence.keyBindings(QKeySequence.StandardKey.Quit) or [QKeySequence("Ctrl+Q")]
        )
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        menus = self.menuBar()
        file_menu = menus.addMenu("&File")
        for action in (self.new_action, self.export_md_action, self.export_json_action):
            file_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(self.settings_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit_menu = menus.addMenu("&Edit")
        edit_menu.addAction(self.copy_action)
        edit_menu.addAction(self.search_action)
        view_menu = menus.addMenu("&View")
        for action in (self.sidebar_action, self.next_action, self.previous_action):
            view_menu.addAction(action)
        chat_menu = menus.addMenu("&Conversation")
        for action in (self.stop_action, self.regenerate_action, self.retry_action):
            chat_menu.addAction(action)
        chat_menu.addSeparator()
        chat_menu.addAction(self.model_action)

    def _connect(self) -> None:
        self.sidebar.newChatRequested.connect(self.new_chat)
        self.sidebar.conversationActivated.connect(self.open_conversation)
        self.sidebar.searchChanged.connect(self._on_search)
        self.sidebar.renameRequested.connect(self.rename)
        self.sidebar.pinRequested.connect(self.set_pinned)
        self.sidebar.deleteRequested.connect(self.ask_delete)
        self.sidebar.exportRequested.connect(self.ask_export)
        self.composer.sendRequested.connect(self._on_send)
        self.composer.stopRequested.connect(self.stop_reply)
        self.view.editRequested.connect(self.start_edit)
        self.view.regenerateRequested.connect(self.regenerate)
        self.view.versionRequested.connect(self.show_version)
        self.view.retryRequested.connect(self.retry)
        self.view.stopRequested.connect(self.stop_reply)
        self.view.copied.connect(lambda what: self.show_status(f"Copied {what}."))
        self.badge.detailsRequested.connect(self.open_storage_details)
        self.banner.exportRequested.connect(lambda: self.ask_export(self.current, "markdown"))
        self.banner.chooseFolderRequested.connect(self.choose_data_folder)

    # --- the runtime (attached by the app) ------------------------------------------------------------------
    def attach_storage(self, storage: Storage) -> None:
        """Show this storage's state and list; called at start and when settings reopen storage."""
        if self.bridge is not None:
            self.bridge.close()
            self.bridge.deleteLater()
        self.storage = storage
        self.bridge = StorageBridge(storage.manager, self)
        self.bridge.statusChanged.connect(self.badge.show_status)
        self.bridge.statusChanged.connect(self.banner.show_status)
        self.bridge.tierChanged.connect(lambda _event: self.request_list_refresh(0))  # another tier, another list
        self.bridge.changed.connect(self._on_storage_changes)
        self.bridge.statusChanged.connect(self._on_storage_status)
        status = self.bridge.status()
        self.badge.show_status(status)
        self.banner.show_status(status)
        if self.details_dialog is not None:
            self.details_dialog.close()
            self.details_dialog = None
        self.request_list_refresh(0)

    def attach_service(self, service: ConversationService) -> None:
        self.service = service
        self._service_ready.set()
        self._show_model()
        if self.current is not None:
            self.open_conversation(self.current, force=True)
        elif self.view.thread_id is None and not self._early:
            self.view.show_note("")
        self.request_list_refresh(0)

    async def detach_service(self) -> None:
        """Stop every reply and forget the service (storage is about to be reopened)."""
        await self.stop_all_replies()
        self._service_ready.clear()
        self.service = None
        self.view.show_note("Reopening storage…")

    async def _ready(self) -> ConversationService:
        if self.service is None:
            self.show_status("Loading the chat engine…")
            await self._service_ready.wait()
        assert self.service is not None
        return self.service

    def set_settings(self, settings: Settings) -> None:
        self.settings = settings
        self._show_model()

    def default_model(self) -> str:
        """The model of the settings (or the server's first when none is set): what "Default" means."""
        return self.service.endpoint.model if self.service is not None else self.settings.model_name

    def model_choice(self, thread_id: str | None = None) -> str:
        """The model chosen for a conversation (the open one by default; None: the new one), "" for the default."""
        thread = self.current if thread_id is None else thread_id
        return self._thread_models.get(thread, "") if thread is not None else self._new_chat_model

    def _show_model(self) -> None:
        chosen = self.model_choice()
        model = chosen or self.default_model()
        if not model:
            self.model_label.setText('Model: <a href="model">choose one…</a>')
        else:
            suffix = "" if chosen else " (default)"
            self.model_label.setText(f'Model: <a href="model">{html.escape(model, quote=False)}</a>{suffix}')
        self.model_label.setToolTip(
            f"Model server: {self.settings.model_base_url}\nClick to choose the model for this conversation (Ctrl+M)"
        )

    # --- the model of a conversation ------------------------------------------------------------------------
    def open_model_menu(self) -> ModelMenu:
        """The menu of models for the open conversation, above the status bar's label; the list loads meanwhile."""
        from chat.endpoints import api_key_name
        from gui.model_picker import ModelMenu  # imported when asked for: it pulls in httpx

        if self.model_menu is not None and shiboken6.isValid(self.model_menu):
            self.model_menu.close()
            self.model_menu.deleteLater()
        thread = self.current
        menu = ModelMenu(self.default_model(), self.model_choice(thread), self)
        menu.chosen.connect(lambda model: self.choose_model(thread, model))
        menu.settingsRequested.connect(self.open_settings)
        self.model_menu = menu
        if self.service is not None:
            base_url, api_key = self.service.endpoint.base_url, self.service.endpoint.api_key
        else:
            base_url = self.settings.model_base_url
            api_key = self.secrets.get(api_key_name(base_url))
        self.tasks.spawn(menu.load(base_url, api_key), "Listing the server's models")
        menu.popup_above(self.model_label if self.model_label.isVisible() else self.statusBar())
        return menu

    def choose_model(self, thread_id: str | None, model: str) -> None:
        """Use ``model`` ("" for the default) for the replies in this conversation (None: the new one).

        A new conversation is not stored until its first message: the choice waits here until then."""
        if thread_id is None:
            self._new_chat_model = model
        else:
            self._thread_models[thread_id] = model
            self._model_fresh_after[thread_id] = float("inf")  # a list read before the write is stored is stale
            previous = self._model_writes.get(thread_id)
            self._model_writes[thread_id] = self.tasks.spawn(
                self._store_model(thread_id, model, previous), "Choosing the model"
            )
        if thread_id == self.current:
            self._show_model()
        self.show_status(f"Replies here will come from {model or 'the default model'}.")

    async def _store_model(self, thread_id: str, model: str, previous: asyncio.Task[None] | None) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])  # choices are stored in the order they were made
            await (await self._ready()).set_model(thread_id, model)
        finally:
            if self._model_writes.get(thread_id) is asyncio.current_task():
                del self._model_writes[thread_id]
                self._model_fresh_after[thread_id] = self._list_generation
            self.request_list_refresh(0)  # also after a failure: the list says what is stored

    async def _model_stored(self, thread_id: str) -> None:
        """Wait until the model chosen for this conversation is stored: the reply about to start must use it."""
        while (write := self._model_writes.get(thread_id)) is not None:
            await asyncio.wait([write])

    def _learn_models(self, conversations: list[Any], generation: int) -> None:
        for conversation in conversations:
            if generation > self._model_fresh_after.get(conversation.thread_id, -1):
                self._thread_models[conversation.thread_id] = conversation.model

    def toggle_sidebar(self) -> None:
        self.show_sidebar(self.sidebar.isHidden())

    def show_sidebar(self, shown: bool) -> None:
        """Show or hide the conversation list (Ctrl+B); hidden, the keyboard focus it held goes to the composer."""
        focused = QApplication.focusWidget()
        had_focus = focused is not None and self.sidebar.isAncestorOf(focused)
        self.sidebar.setVisible(shown)
        self.sidebar_action.setChecked(shown)
        if not shown and had_focus:
            self.composer.edit.setFocus(Qt.FocusReason.OtherFocusReason)

    # --- state across runs ----------------------------------------------------------------------------------
    def restore_state(self) -> str | None:
        """Geometry and splitter from the last run; returns the conversation that was open then."""
        geometry = self.state.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        splitter = self.state.value("window/splitter")
        if isinstance(splitter, QByteArray) and not splitter.isEmpty():
            self.splitter.restoreState(splitter)
        self.show_sidebar(self.state.value("window/sidebar", True) not in (False, "false"))
        thread = self.state.value("session/open_thread")
        return str(thread) if thread else None

    def save_state(self) -> None:
        self.state.setValue("window/geometry", self.saveGeometry())
        self.state.setValue("window/splitter", self.splitter.saveState())
        self.state.setValue("window/sidebar", not self.sidebar.isHidden())
        self.state.setValue("session/open_thread", self.current or "")
        self.state.sync()

    # --- the list -------------------------------------------------------------------------------------------
    def request_list_refresh(self, delay_ms: int = LIST_REFRESH_MS) -> None:
        if not self._list_timer.isActive() or delay_ms < self._list_timer.remainingTime():
            self._list_timer.start(delay_ms)

    def show_index(self, conversations: list[Any]) -> None:
        """The list as the local file has it, shown before storage is open; ``attach_storage`` refreshes it."""
        if self.storage is None:
            self._learn_models(conversations, self._list_generation)
            self.sidebar.set_conversations(conversations)

    async def refresh_list(self) -> None:
        self._list_generation += 1
        generation = self._list_generation
        query = self._query
        if self.service is not None:
            service = self.service
            conversations = await (service.search(query) if query else service.conversations())
        elif self.storage is not None:
            # Before the chat engine has loaded: the index alone, titles only.
            conversations = await self.storage.manager.conversations()
            if query:
                needle = query.casefold()
                conversations = [c for c in conversations if needle in c.title.casefold()]
        else:
            return
        if generation < self._list_applied:
            return  # a newer refresh finished first: this answer is older
        self._list_applied = generation
        self._learn_models(conversations, generation)
        self._show_model()
        self.sidebar.set_conversations(conversations, searching=bool(query))
        self.sidebar.select(self.current)
        if self.current is not None:
            title = next((c.title for c in conversations if c.thread_id == self.current), None)
            if title is not None:
                self.setWindowTitle(f"{title} — {APP_TITLE}" if title else APP_TITLE)
        self.listRefreshed.emit()

    def _on_storage_status(self, status: Any) -> None:
        """Say once what happened to the user's words when storage reports something new (a file replaced, the
        local copy failing or working again)."""
        if status.notice and status.notice != self._notice_shown:
            self._notice_shown = status.notice
            self.show_status(status.notice, NOTICE_MS)

    def _on_storage_changes(self, change: Changes) -> None:
        """Storage changed (this window's own writes, the sync, another process on this data folder): redraw what
        the change names: the list, and the open conversation when its thread changed elsewhere."""
        self.request_list_refresh(0 if change.source != "local" else LIST_REFRESH_MS)
        thread = self.current
        if thread is None or change.source == "local" or thread not in change.threads:
            return
        if thread in change.removed:
            self._failures.pop(thread, None)
            self._drafts.pop(thread, None)
            self.new_chat()
            self.view.show_note("This conversation was deleted on another device.")
            self.show_status("The open conversation was deleted on another device.")
        elif thread not in self._runs:
            self.tasks.spawn(self._follow(thread), "Showing the conversation's new turns")

    def _on_search(self, text: str) -> None:
        self._query = text
        self.request_list_refresh(0)

    def focus_search(self) -> None:
        self.show_sidebar(True)  # Ctrl+K with the list hidden brings it back
        self.sidebar.focus_search()

    # --- opening conversations ------------------------------------------------------------------------------
    def _show_usage(self, usage: Usage | None) -> None:
        """The open conversation's tokens, as the server counted them for the replies shown."""
        if usage is None or not usage.output_tokens:
            self.usage_label.clear()
            self.usage_label.setToolTip("")
            return
        self.usage_label.setText(f"{usage.input_tokens + usage.output_tokens:,} tokens")
        self.usage_label.setToolTip(
            f"This conversation, as shown: {usage.input_tokens:,} tokens sent to the model and "
            f"{usage.output_tokens:,} in its replies (the server's count)"
        )

    def new_chat(self) -> None:
        self._leave_current()
        self.branch_note.hide()
        self._show_usage(None)
        self.current = None
        self.composer.cancel_edit()
        self.view.show_note("")
        self.sidebar.select(None)
        self.setWindowTitle(APP_TITLE)
        self.composer.set_text(self._drafts.pop(None, ""))
        self.composer.set_streaming(False)
        self._show_model()
        self.composer.edit.setFocus()
        self.conversationShown.emit("")

    def open_conversation(self, thread_id: str, *, force: bool = False) -> None:
        if thread_id == self.current and not force and self.view.thread_id == thread_id:
            return
        if thread_id != self.current:
            self._leave_current()
            self.composer.cancel_edit()
            self.composer.set_text(self._drafts.pop(thread_id, ""))
        self.current = thread_id
        self.sidebar.select(thread_id)
        self._show_model()
        self.composer.set_streaming(thread_id in self._runs)
        if self.service is None:
            self.view.show_note("Loading…")
        self._load_generation += 1
        self.tasks.spawn(self._open(thread_id, self._load_generation), "Opening the conversation")

    def _leave_current(self) -> None:
        text = self.composer.text()
        if text.strip() and self.composer.editing_id is None:
            self._drafts[self.current] = text

    async def _open(self, thread_id: str, generation: int) -> None:
        service = await self._ready()
        started = time.perf_counter()
        loaded = await service.load(thread_id)
        load_ms = (time.perf_counter() - started) * 1000
        if thread_id not in self._thread_models:  # not in the list yet (opened before it was read)
            conversation = await service.conversation(thread_id)
            self._thread_models.setdefault(thread_id, conversation.model if conversation is not None else "")
        if generation != self._load_generation or self.current != thread_id:
            return  # the user went elsewhere meanwhile
        self._show_model()
        self._shown_at[thread_id] = loaded.checkpoint_id
        render_ms = self.view.show_conversation(thread_id, loaded.messages)
        self.view.set_versions(loaded.versions)
        self._show_usage(loaded.usage)
        self.last_open_timing = (load_ms, render_ms)
        log.info(
            "opened a conversation of %d messages: load %.0f ms, render %.0f ms",
            len(loaded.messages),
            load_ms,
            render_ms,
        )
        self.setWindowTitle(f"{loaded.title} — {APP_TITLE}" if loaded.title else APP_TITLE)
        self.branch_note.opened()
        self.branch_note.show_for(loaded)
        self._show_tail(thread_id, awaiting=loaded.awaiting_reply)
        self.state.setValue("session/open_thread", thread_id)
        self.conversationShown.emit(thread_id)

    def _show_tail(self, thread_id: str, *, awaiting: bool) -> None:
        """What follows the stored messages: the reply streaming now, or the failure with its Retry."""
        run = self._runs.get(thread_id)
        self.view.set_busy(run is not None)
        self.composer.set_streaming(run is not None)
        if run is not None:
            if not self.view.streaming:
                self.view.begin_reply(run.text(), since=run.started)
            return
        failure = self._failures.get(thread_id)
        if failure is not None:
            self._show_failure(failure)
        elif awaiting:
            self.view.show_error("This message has no reply yet.", title="No reply.")

    def _show_failure(self, failure: Failure) -> None:
        title = "Stopped." if failure.kind == "stopped" else "The reply failed."
        self.view.show_error(failure.message, failure.partial, title=title, retry_at=failure.retry_at)

    async def _follow(self, thread_id: str) -> None:
        """The open conversation changed elsewhere: show its new turns, unless they are another branch."""
        service = await self._ready()
        await self._reload(thread_id, await service.follow(thread_id, self._shown_at.get(thread_id)), live=True)

    async def _reload(self, thread_id: str, at: str | None = None, *, live: bool = False) -> None:
        """Bring the view in line with what is stored (real ids for the messages shown while sending): as of
        checkpoint ``at`` (a reply's own result), or the thread's newest. ``live``: following a change made
        elsewhere."""
        service = await self._ready()
        loaded = await service.load(thread_id, at)
        if self.current != thread_id:
            return
        self._shown_at[thread_id] = loaded.checkpoint_id
        self.view.set_messages(thread_id, loaded.messages)
        self.view.set_versions(loaded.versions)
        self._show_usage(loaded.usage)
        self.branch_note.show_for(loaded, live=live)
        if loaded.title:
            self.setWindowTitle(f"{loaded.title} — {APP_TITLE}")
        if not self.view.has_error() and not self.view.streaming:
            self._show_tail(thread_id, awaiting=loaded.awaiting_reply)

    def show_version(self, checkpoint_id: str) -> None:
        """Show another version of a message ("‹ 2 / 3 ›"): the conversation continues from it, here and on every
        device (the choice is stored with the conversation)."""
        thread = self.current
        if thread is None or thread in self._runs:
            return
        self.tasks.spawn(self._show_version(thread, checkpoint_id), "Showing another version")

    async def _show_version(self, thread: str, checkpoint_id: str) -> None:
        service = await self._ready()
        shown = await service.show_version(thread, checkpoint_id)
        self._failures.pop(thread, None)
        self.view.clear_error()
        await self._reload(thread, shown)

    # --- replies --------------------------------------------------------------------------------------------
    def _on_send(self, text: str) -> None:
        editing = self.composer.editing_id
        if self.service is None and editing is None:
            self._send_early(text)
        elif editing is not None:
            self.composer.finish_edit()
            self.tasks.spawn(self._edit_and_resend(editing, text), "Sending the edited message")
        else:
            self.tasks.spawn(self._send(text), "Sending the message")

    def _pending(self, text: str) -> Shown:
        self._pending_counter += 1
        return Shown(f"pending:{self._pending_counter}", "user", text)

    def _send_early(self, text: str) -> None:
        """A message sent before the chat engine has loaded: shown at once, sent as soon as the engine is there, in
        the order typed and into one conversation (each waiting for the reply before it)."""
        shown = self._pending(text)
        self._early.append(shown)
        self.view.append_message(shown)
        self.show_status("Loading the chat engine: your message is sent as soon as it is ready.")
        if len(self._early) == 1:
            self.tasks.spawn(self._send_early_messages(), "Sending the message")

    async def _send_early_messages(self) -> None:
        await self._ready()
        ids = [m.id for m in self.view.messages()]
        first = next((ids.index(m.id) for m in self._early if m.id in ids), None)
        if first is not None:
            self.view.remove_messages_from(first)  # each is shown again as it is sent
        while self._early:
            await self._send(self._early.pop(0).text)

    async def _send(self, text: str) -> None:
        thread = self.current
        service = await self._ready()
        model: str | None = None
        if thread is None:
            thread = service.new_thread_id()
            chosen, self._new_chat_model = self._new_chat_model, ""  # the new conversation's choice goes with it
            self._thread_models[thread] = chosen
            model = chosen or None
            if self.current is None:
                self.current = thread
                self.view.thread_id = thread
                self._show_model()
        if thread in self._runs:
            self.composer.restore_draft(text)
            self.show_status("A reply is still streaming in this conversation: stop it first (Esc).")
            return
        self._failures.pop(thread, None)
        if self.current == thread:
            self.view.append_message(self._pending(text))
        at = self._shown_at.get(thread) or None
        if model is None:
            await self._run(thread, service.send(thread, text, at), draft=text)
            return
        # The choice is stored with the conversation once its first message is (nothing is stored before it): a
        # list read until then would say "default".
        self._model_fresh_after[thread] = float("inf")
        try:
            await self._run(thread, service.send(thread, text, at, model=model), draft=text)
        finally:
            if self._model_fresh_after.get(thread) == float("inf") and thread not in self._model_writes:
                self._model_fresh_after[thread] = self._list_generation

    async def _edit_and_resend(self, message_id: str, text: str) -> None:
        thread = self.current
        service = await self._ready()
        if thread is None or thread in self._runs:
            self.composer.restore_draft(text)
            return
        index = next((i for i, m in enumerate(self.view.messages()) if m.id == message_id), None)
        if index is not None:
            self.view.remove_messages_from(index)
        self._failures.pop(thread, None)
        self.view.append_message(self._pending(text))
        at = self._shown_at.get(thread) or None
        await self._run(thread, service.edit_and_resend(thread, message_id, text, at), draft=text)

    def regenerate(self) -> None:
        thread = self.current
        if thread is None or thread in self._runs:
            return
        self.tasks.spawn(self._regenerate(thread), "Regenerating the reply")

    async def _regenerate(self, thread: str) -> None:
        service = await self._ready()
        messages = self.view.messages()
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        if last_user is None:
            return
        self.view.remove_messages_from(last_user + 1)
        self._failures.pop(thread, None)
        await self._run(thread, service.regenerate(thread, self._shown_at.get(thread) or None))

    def retry(self) -> None:
        thread = self.current
        if thread is None or thread in self._runs:
            return
        self.tasks.spawn(self._retry(thread), "Retrying the reply")

    async def _retry(self, thread: str) -> None:
        service = await self._ready()
        self._failures.pop(thread, None)
        self.view.clear_error()
        await self._run(thread, service.retry(thread, self._shown_at.get(thread) or None))

    async def _run(self, thread: str, events: AsyncIterator[ChatEvent], *, draft: str | None = None) -> None:
        """Stream one reply into ``thread``: the view follows while it is the open conversation."""
        run = Run(thread, task=asyncio.current_task())
        self._runs[thread] = run
        if self.current == thread:
            self.view.set_busy(True)
            self.view.begin_reply(since=run.started)
            self.composer.set_streaming(True)
        outcome: ReplyDone | Failure | None = None
        received = False
        try:
            await self._model_stored(thread)
            async for event in events:
                received = True
                if isinstance(event, Token):
                    run.parts.append(event.text)
                    if self.current == thread:
                        self.view.append_tokens(event.text)
                elif isinstance(event, Thinking):
                    if self.current == thread and not run.parts:
                        self.view.set_thinking()
                elif isinstance(event, ReplyDone):
                    outcome = event
                elif isinstance(event, ReplyFailed):
                    wait = event.retry_after
                    retry_at = None if wait is None else time.monotonic() + wait
                    outcome = Failure(event.message, event.kind, event.partial_text, retry_at)
        except Exception as exc:  # the service raised before or instead of a reply: show it, keep the words
            log.exception("sending failed")
            outcome = Failure(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, "bug")
            if not received and draft is not None:
                self.composer.restore_draft(draft)
        finally:
            self._runs.pop(thread, None)
        if outcome is None:
            outcome = Failure("The reply ended without an answer.", "unknown", run.text())
        if isinstance(outcome, Failure):
            self._failures[thread] = outcome
        at = outcome.checkpoint_id or None if isinstance(outcome, ReplyDone) else None
        if at is not None:
            self._shown_at[thread] = at  # the reply's own result, whatever arrived from elsewhere meanwhile
        if self.current == thread:
            self.view.set_busy(False)
            self.composer.set_streaming(False)
            if isinstance(outcome, ReplyDone):
                self.view.finish_reply(Shown(outcome.message_id, "assistant", outcome.text, outcome.stopped))
            else:
                self.view.discard_reply()
                self._show_failure(outcome)
            # A turn of the loop between the two: the finished card is drawn (a long reply's text becomes selectable
            # then, ~20 ms) before the reload reads the conversation back (~10 ms), not in one stretch of both.
            await asyncio.sleep(0)
            await self._reload(thread, at)
        await self.refresh_list()  # replyFinished promises the list is up to date
        self.replyFinished.emit(thread)

    def replying(self) -> bool:
        """A reply is being written (in any conversation)."""
        return bool(self._runs)

    def stop_reply(self) -> None:
        thread = self.current
        if thread is not None and self.service is not None and self.service.stop(thread):
            self.show_status("Stopping the reply…")

    def stop_all(self) -> None:
        """Ask every streaming reply to stop (what arrived is kept); ``stop_all_replies`` also waits."""
        if self.service is not None:
            for thread_id in list(self._runs):
                self.service.stop(thread_id)

    async def stop_all_replies(self, timeout: float = 10.0) -> None:
        """Stop every streaming reply (what arrived is kept) and wait until each is stored."""
        runs = list(self._runs.values())
        self.stop_all()
        tasks = [run.task for run in runs if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def is_streaming(self, thread_id: str | None = None) -> bool:
        return (thread_id or self.current) in self._runs

    def start_edit(self, message_id: str, text: str) -> None:
        if self.is_streaming():
            self.show_status("A reply is streaming: stop it (Esc) before editing a message.")
            return
        self.composer.start_edit(message_id, text)

    def copy_last_reply(self) -> None:
        text = self.view.last_reply_text()
        if text is None:
            self.show_status("There is no reply to copy.")
            return
        QGuiApplication.clipboard().setText(text)
        self.show_status("Copied the last reply.")

    # --- conversation metadata ------------------------------------------------------------------------------
    def rename(self, thread_id: str, title: str) -> None:
        async def rename() -> None:
            await (await self._ready()).rename(thread_id, title)  # the change feed redraws the list

        self.tasks.spawn(rename(), "Renaming the conversation")

    def set_pinned(self, thread_id: str, pinned: bool) -> None:
        async def pin() -> None:
            await (await self._ready()).set_pinned(thread_id, pinned)

        self.tasks.spawn(pin(), "Pinning the conversation")

    def _title_of(self, thread_id: str) -> str:
        item = self.sidebar.item_for(thread_id)
        return str(item.data(TITLE_ROLE)) if item is not None else ""

    def ask_delete(self, thread_id: str) -> QMessageBox:
        title = self._title_of(thread_id)
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Delete conversation",
            f"Delete “{title or 'this conversation'}”? This cannot be undone.",
            QMessageBox.StandardButton.Cancel,
            self,
        )
        delete = box.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setObjectName("deleteConfirmation")

        def finished() -> None:
            if box.clickedButton() is delete:
                self.delete(thread_id)
            box.deleteLater()

        box.finished.connect(lambda _result: finished())
        box.open()  # not exec(): no nested event loop
        return box

    def delete(self, thread_id: str) -> None:
        async def delete() -> None:
            service = await self._ready()
            if service.stop(thread_id):
                run = self._runs.get(thread_id)
                if run is not None and run.task is not None:
                    await asyncio.wait([run.task], timeout=10)
            await service.delete(thread_id)
            self._failures.pop(thread_id, None)
            self._drafts.pop(thread_id, None)
            self._thread_models.pop(thread_id, None)
            if self.current == thread_id:
                self.new_chat()
            self.show_status("Conversation deleted.")

        self.tasks.spawn(delete(), "Deleting the conversation")

    def ask_export(self, thread_id: str | None, fmt: str) -> QFileDialog | None:
        if thread_id is None:
            self.show_status("Open a conversation to export it.")
            return None
        title = self._title_of(thread_id)
        suffix = ".md" if fmt == "markdown" else ".json"
        name = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in title).strip() or "conversation"
        dialog = QFileDialog(self, "Export conversation", str(Path.home() / (name + suffix)))
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setNameFilter("Markdown (*.md)" if fmt == "markdown" else "JSON (*.json)")
        dialog.setDefaultSuffix(suffix[1:])
        dialog.setObjectName("exportDialog")
        dialog.fileSelected.connect(lambda path: self.export(thread_id, fmt, Path(path)))
        dialog.finished.connect(lambda _result: dialog.deleteLater())
        dialog.open()
        return dialog

    def export(self, thread_id: str, fmt: str, path: Path) -> asyncio.Task[None]:
        async def export() -> None:
            service = await self._ready()
            text = await (service.export_markdown(thread_id) if fmt == "markdown" else service.export_json(thread_id))
            await asyncio.to_thread(path.write_text, text, encoding="utf-8")
            self.show_status(f"Exported to {path}.")

        return self.tasks.spawn(export(), "Exporting the conversation")

    # --- dialogs --------------------------------------------------------------------------------------------
    def open_settings(self) -> QWidget:
        from gui.settings_dialog import SettingsDialog  # imported when asked for: it pulls in psycopg's conninfo

        if self.settings_dialog is not None and self.settings_dialog.isVisible():
            self.settings_dialog.raise_()
            self.settings_dialog.activateWindow()
            return self.settings_dialog
        dialog = SettingsDialog(self.settings, self.secrets, self)
        dialog.settingsApplied.connect(self._on_settings_applied)
        dialog.finished.connect(lambda _result: self._forget_settings(dialog))
        self.settings_dialog = dialog
        dialog.open()
        return dialog

    def _forget_settings(self, dialog: QWidget) -> None:
        if self.settings_dialog is dialog:
            self.settings_dialog = None
        dialog.deleteLater()

    def _on_settings_applied(self, settings: Settings) -> None:
        self.set_settings(settings)
        self.settingsApplied.emit(settings)

    def open_storage_details(self) -> StorageDetailsDialog | None:
        if self.bridge is None:
            return None
        if self.details_dialog is None:
            self.details_dialog = StorageDetailsDialog(self.bridge, self.settings, self.secrets, self)
            self.details_dialog.finished.connect(self._forget_details)
            self.details_dialog.chooseFolderRequested.connect(self.choose_data_folder)
        self.details_dialog.show()
        self.details_dialog.raise_()
        return self.details_dialog

    def choose_data_folder(self) -> QFileDialog:
        """Ask for another data folder (the banner's and the details' button while nothing is saved)."""
        dialog = QFileDialog(self, "Choose a folder to save conversations in", str(Path.home()))
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.setObjectName("dataFolderDialog")
        dialog.fileSelected.connect(lambda path: self.use_data_folder(Path(path)))
        dialog.finished.connect(lambda _result: dialog.deleteLater())
        dialog.open()
        return dialog

    def use_data_folder(self, folder: Path) -> None:
        """Save in ``folder`` from now on: stored in the settings and applied at once; what was written while nothing
        was saved moves there (``CairnApp.reopen_storage``)."""
        from storage.settings import SettingsError, load_settings, save_settings

        try:
            save_settings({"CAIRN_DATA_DIR": str(folder)}, config_dir=self.settings.config_dir, secrets=self.secrets)
        except (SettingsError, OSError) as exc:
            self.show_status(f"Cannot use {folder}: {exc}", 10_000)
            return
        settings = load_settings(config_dir=self.settings.config_dir, strict=False)
        if settings.data_dir != folder:
            self.show_status(f"CAIRN_DATA_DIR is set in the environment or .env: {settings.data_dir} stays in use.")
        self._on_settings_applied(settings)

    def _forget_details(self) -> None:
        if self.details_dialog is not None:
            self.details_dialog.deleteLater()
            self.details_dialog = None

    # --- feedback -------------------------------------------------------------------------------------------
    def show_status(self, text: str, timeout_ms: int = STATUS_MESSAGE_MS) -> None:
        self.statusBar().showMessage(text, timeout_ms)

    def show_problems(self, problems: list[str]) -> QMessageBox | None:
        """Settings that could not be used: say so once, without blocking the start."""
        if not problems:
            return None
        box = QMessageBox(QMessageBox.Icon.Warning, "Settings problems", "Some settings were ignored:", parent=self)
        box.setInformativeText("\n".join(f"• {p}" for p in problems))
        box.setObjectName("settingsProblems")
        box.finished.connect(lambda _result: box.deleteLater())
        box.open()
        return box

    def _on_task_failed(self, what: str, message: str) -> None:
        self.show_status(f"{what} failed: {message}", 10_000)

    # --- Qt events ------------------------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape and event.modifiers() == Qt.KeyboardModifier.NoModifier:
            if self.is_streaming():
                self.stop_reply()
            elif self.composer.editing_id is not None:
                self.composer.cancel_edit()
            elif self.sidebar.search.hasFocus() and self.sidebar.search.text():
                self.sidebar.search.clear()
            event.accept()
            return
        super().keyPressEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:
        # Every way of quitting passes here: the window's close button, Ctrl+Q, and the app's own quit (Qt asks each
        # window to close first, and an ignored close cancels the quit).
        if not self._close_confirmed and self.unsaved_threads():
            event.ignore()
            self.ask_before_quitting()
            return
        self.save_state()
        super().closeEvent(event)

    # --- quitting while nothing durable works ---------------------------------------------------------------
    def unsaved_threads(self) -> set[str]:
        """Conversations only memory holds (no data folder, no Postgres took them): lost when Cairn quits."""
        return self.storage.manager.memory.unsaved_threads() if self.storage is not None else set()

    def allow_close(self) -> None:
        """Close without asking from now on (the app is quitting for good)."""
        self._close_confirmed = True

    def ask_before_quitting(self) -> QuitWarning:
        """Say what quitting would lose: Export… opens the export (and does not quit), Quit anyway quits."""
        if self.quit_warning is not None and self.quit_warning.isVisible():
            self.quit_warning.raise_()
            return self.quit_warning
        reason = self.bridge.status().reason if self.bridge is not None else ""
        box = QuitWarning(len(self.unsaved_threads()), reason, self)
        self.quit_warning = box

        def finished() -> None:
            clicked = box.clickedButton()
            if self.quit_warning is box:
                self.quit_warning = None
            box.deleteLater()
            if clicked is box.export_button:
                self.export_unsaved()
            elif clicked is box.quit_button:
                self._close_confirmed = True
                self.close()

        box.finished.connect(lambda _result: finished())
        box.open()  # not exec(): no nested event loop
        return box

    def export_unsaved(self) -> QFileDialog | None:
        """The export of the open conversation when only memory holds it, else of the newest one only memory holds."""
        unsaved = self.unsaved_threads()
        listed = [t for t in self.sidebar.thread_ids() if t in unsaved]
        thread = self.current if self.current in unsaved else next(iter(listed), self.current)
        return self.ask_export(thread, "markdown")

