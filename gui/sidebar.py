"""The conversation list: New chat, search, pinned first then by date (Today, Yesterday, ...), and a context menu
(rename, pin, export, delete); every part of it reachable from the keyboard."""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Protocol

from PySide6.QtCore import QEvent, QModelIndex, QObject, QPersistentModelIndex, QPoint, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QFont, QKeyEvent, QMouseEvent, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

THREAD_ROLE = Qt.ItemDataRole.UserRole
TITLE_ROLE = Qt.ItemDataRole.UserRole + 1
PINNED_ROLE = Qt.ItemDataRole.UserRole + 2
SEARCH_DELAY_MS = 150
RENAME_GRACE_SECONDS = 5.0
UNTITLED = "New conversation"


class ConversationLike(Protocol):
    """What the list shows of ``storage.backends.Conversation``."""

    @property
    def thread_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def pinned(self) -> bool: ...
    @property
    def updated(self) -> float: ...


def group_of(timestamp: float, today: date) -> str:
    """The date group a conversation last active at ``timestamp`` is listed under, as in other chat apps."""
    if not timestamp:
        return "Older"
    day = datetime.fromtimestamp(timestamp).date()
    age = (today - day).days
    if age <= 0:  # today, or a clock that ran ahead
        return "Today"
    if age == 1:
        return "Yesterday"
    if age < 7:
        return "Previous 7 days"
    if age < 30:
        return "Previous 30 days"
    if day.year == today.year:
        return day.strftime("%B")
    return str(day.year)


def _when(timestamp: float) -> str:
    if not timestamp:
        return ""
    moment = datetime.fromtimestamp(timestamp)
    if time.time() - timestamp < 86_400 and moment.date() == datetime.now().date():
        return moment.strftime("today %H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class _Row:
    """What one item of the list shows."""

    thread_id: str
    title: str
    pinned: bool
    tooltip: str
    group: str


def _keys(rows: Sequence[_Row]) -> list[tuple[str, str]]:
    """What the list shows, in order: ("header", group) before each group's first row, ("thread", id) for a row."""
    keys: list[tuple[str, str]] = []
    section: str | None = None
    for row in rows:
        if row.group != section:
            section = row.group
            keys.append(("header", section))
        keys.append(("thread", row.thread_id))
    return keys


class _RowDelegate(QStyledItemDelegate):
    """Rows as wide as the list, never wider: a long title ends in an ellipsis instead of widening every row and
    bringing a horizontal scrollbar (which QListView did as soon as the vertical one appeared)."""

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        return QSize(1, super().sizeHint(option, index).height())


class ConversationList(QListWidget):
    """F2 renames, Delete deletes: the keyboard reaches what the context menu offers. Up from the first row goes
    back to the search box (``leftAtTop``). A row opens when the left button goes down on it (``pressedOn``), as in
    a mail client: the conversation loads while the button is still down, a click's length sooner than on release."""

    renameKey = Signal()
    deleteKey = Signal()
    leftAtTop = Signal()
    pressedOn = Signal(QListWidgetItem)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_F2 and self.currentItem() is not None and self.state() != self.State.EditingState:
            self.renameKey.emit()
            return
        if event.key() == Qt.Key.Key_Delete and self.state() != self.State.EditingState:
            self.deleteKey.emit()
            return
        if event.key() == Qt.Key.Key_Up and event.modifiers() == Qt.KeyboardModifier.NoModifier:
            first = next((self.item(i) for i in range(self.count()) if self.item(i).data(THREAD_ROLE)), None)
            if first is None or self.currentItem() is first or self.currentItem() is None:
                self.leftAtTop.emit()
                return
        super().keyPressEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        # A right click opens the menu of the row under it (customContextMenuRequested) and leaves the open
        # conversation highlighted: it must not look as if another one had been opened.
        if event.button() == Qt.MouseButton.RightButton:
            event.accept()
            return
        super().mousePressEvent(event)
        item = self.itemAt(event.position().toPoint())
        if event.button() == Qt.MouseButton.LeftButton and item is not None and self.state() != self.State.EditingState:
            self.pressedOn.emit(item)


class Sidebar(QWidget):
    newChatRequested = Signal()
    conversationActivated = Signal(str)
    searchChanged = Signal(str)  # debounced
    renameRequested = Signal(str, str)
    pinRequested = Signal(str, bool)
    deleteRequested = Signal(str)
    exportRequested = Signal(str, str)  # thread id, "markdown" | "json"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sidebar")
        self.new_button = QPushButton("New chat")
        self.new_button.setObjectName("newChatButton")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.newChatRequested)
        self.search = QLineEdit()
        self.search.setObjectName("searchBox")
        self.search.setPlaceholderText("Search conversations (Ctrl+K)")
        self.search.setClearButtonEnabled(True)
        self.search.setAccessibleName("Search conversations")
        self.list = ConversationList()
        self.list.setObjectName("conversationList")
        self.list.setAccessibleName("Conversations")
        self.list.setUniformItemSizes(True)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setWordWrap(False)
        self.list.setItemDelegate(_RowDelegate(self.list))
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.empty_label = QLabel()
        self.empty_label.setObjectName("emptyListLabel")
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        # Muted but readable: the placeholder colour (the window keeps it at 4.5:1, gui/contrast.py). The disabled
        # text colour it used to borrow is meant for controls that do nothing, and reads at 1.6:1 under Fusion.
        self.empty_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.empty_label.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 4, 8)
        layout.addWidget(self.new_button)
        layout.addWidget(self.search)
        layout.addWidget(self.empty_label)  # under the search box, where the eye is, not at the bottom
        layout.addWidget(self.list, 1)

        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(lambda: self.searchChanged.emit(self.search.text().strip()))
        self.search.textChanged.connect(lambda _text: self._search_timer.start())
        self.search.returnPressed.connect(self._activate_first)
        self.search.installEventFilter(self)
        self.list.leftAtTop.connect(lambda: self.search.setFocus(Qt.FocusReason.OtherFocusReason))
        self.list.itemActivated.connect(self._on_activated)
        self.list.itemClicked.connect(self._on_activated)
        self.list.pressedOn.connect(self._on_activated)
        self.list.itemChanged.connect(self._on_item_changed)
        self.list.customContextMenuRequested.connect(self._on_context_menu)
        self.list.renameKey.connect(lambda: self._start_rename(self.current_thread()))
        self.list.deleteKey.connect(lambda: self._request_delete(self.current_thread()))
        self._filling = False
        self._deferred: tuple[list[ConversationLike], bool] | None = None
        self._renamed: dict[str, tuple[str, float]] = {}
        self._rows: list[_Row] = []  # what the list shows, in order
        self._made: dict[str, tuple[tuple[object, ...], _Row]] = {}  # thread -> (what its row was made from, row)
        self._by_thread: dict[str, QListWidgetItem] = {}
        self._selected: str | None = None
        self.list.itemDelegate().closeEditor.connect(lambda *_args: QTimer.singleShot(0, self._apply_deferred))
        self.menu: QMenu | None = None  # the last context menu (kept so tests and accessibility tools can reach it)

    # --- content --------------------------------------------------------------------------------------------
    def set_conversations(self, conversations: Sequence[ConversationLike], *, searching: bool = False) -> None:
        """Show these conversations (already ordered: pinned first, then newest), keeping the selection.

        While the user is renaming one, the new list waits until the editor closes: a refresh never eats a title
        being typed."""
        if self.list.state() == QAbstractItemView.State.EditingState:
            self._deferred = (list(conversations), searching)
            return
        self._deferred = None
        rows = self._rows_for(conversations)
        if not self._rows or not rows:
            self._rebuild(rows)
        else:
            self._update(rows)
        empty = not conversations
        self.empty_label.setText("No conversation matches." if searching else "No conversations yet.")
        self.empty_label.setVisible(empty)

    def _rows_for(self, conversations: Sequence[ConversationLike]) -> list[_Row]:
        """A row per conversation, made again only where what it shows changed: formatting the dates of 1,000
        conversations took the loop away for 15-40 ms at every refresh (two per reply)."""
        today = date.today()  # the same time reads "today 14:02" or "2026-11-30 14:02" depending on the day
        made, self._made = self._made, {}
        rows = []
        for conversation in conversations:
            key = (conversation.title, conversation.updated, conversation.pinned, today)
            known = made.get(conversation.thread_id)
            if known is not None and known[0] == key and conversation.thread_id not in self._renamed:
                row = known[1]
            else:
                row = self._row(conversation, today)
            self._made[conversation.thread_id] = (key, row)
            rows.append(row)
        return rows

    def _row(self, conversation: ConversationLike, today: date) -> _Row:
        title = self._title(conversation)
        when = _when(conversation.updated)
        tooltip = f"{title}\n{'Pinned · ' if conversation.pinned else ''}Last message {when}".strip()
        group = "Pinned" if conversation.pinned else group_of(conversation.updated, today)
        return _Row(conversation.thread_id, title, conversation.pinned, tooltip, group)

    def _update(self, rows: list[_Row]) -> None:
        """Show ``rows`` by changing only what differs from the list shown: the conversation of a reply moves to the
        top (and its date group may change), the rest is left alone. Making 1,000 items again took the loop about
        20 ms, and much longer while the model thread computed: each of its thousands of Qt calls gave the
        interpreter lock away and waited to get it back."""
        old_keys, new_keys = _keys(self._rows), _keys(rows)
        start = 0  # the equal start and end are left alone; only the middle is compared
        while start < min(len(old_keys), len(new_keys)) and old_keys[start] == new_keys[start]:
            start += 1
        end = 0
        while end < min(len(old_keys), len(new_keys)) - start and old_keys[-1 - end] == new_keys[-1 - end]:
            end += 1
        middle = difflib.SequenceMatcher(
            None, old_keys[start : len(old_keys) - end], new_keys[start : len(new_keys) - end], autojunk=False
        )
        by_id = {row.thread_id: row for row in rows}
        header_font = self._header_font()
        self._filling = True
        try:
            taken: dict[str, QListWidgetItem] = {}  # items moved: taken out below, put back above
            for tag, i1, i2, j1, j2 in reversed(middle.get_opcodes()):  # from the end: earlier positions stay valid
                if tag == "equal":
                    continue
                for _ in range(i2 - i1):
                    item = self.list.takeItem(start + i1)
                    thread_id = item.data(THREAD_ROLE)
                    if thread_id:
                        taken[thread_id] = item
                for offset, (kind, key) in enumerate(new_keys[start + j1 : start + j2]):
                    if kind == "header":
                        self.list.insertItem(start + i1 + offset, self._header(key, header_font))
                    else:
                        item = taken.pop(key) if key in taken else self._item(by_id[key])
                        self.list.insertItem(start + i1 + offset, item)
                        self._by_thread[key] = item
            shown = {row.thread_id: row for row in self._rows}
            for row in rows:
                item = self._by_thread[row.thread_id]
                if shown.get(row.thread_id) != row:
                    item.setText(row.title)
                    item.setData(TITLE_ROLE, row.title)
                    item.setData(PINNED_ROLE, row.pinned)
                    item.setToolTip(row.tooltip)
            for thread_id in set(self._by_thread) - set(by_id):
                del self._by_thread[thread_id]
            selected = self._by_thread.get(self._selected or "")
            if selected is not None and not selected.isSelected():
                selected.setSelected(True)
                self.list.setCurrentItem(selected)
        finally:
            self._filling = False
        self._rows = rows

    def _header_font(self) -> QFont:
        font = QFont(self.list.font())
        font.setBold(True)
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        return font

    def _item(self, row: _Row) -> QListWidgetItem:
        item = QListWidgetItem(row.title)
        item.setData(THREAD_ROLE, row.thread_id)
        item.setData(TITLE_ROLE, row.title)
        item.setData(PINNED_ROLE, row.pinned)
        item.setToolTip(row.tooltip)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        return item

    def _rebuild(self, rows: list[_Row]) -> None:
        self._filling = True
        self._rows = rows
        self._by_thread = {}
        try:
            self.list.clear()
            header_font = self._header_font()
            section: str | None = None
            for row in rows:
                if row.group != section:
                    section = row.group
                    self.list.addItem(self._header(section, header_font))
                item = self._item(row)
                self.list.addItem(item)
                self._by_thread[row.thread_id] = item
                if row.thread_id == self._selected:
                    item.setSelected(True)
                    self.list.setCurrentItem(item)
        finally:
            self._filling = False

    def _title(self, conversation: ConversationLike) -> str:
        """The stored title, or the one just typed while the list read from storage is older than that rename."""
        renamed = self._renamed.get(conversation.thread_id)
        if renamed is not None:
            title, at = renamed
            if conversation.title == title or time.monotonic() - at > RENAME_GRACE_SECONDS:
                del self._renamed[conversation.thread_id]
            else:
                return title
        return conversation.title or UNTITLED

    def _apply_deferred(self) -> None:
        if self._deferred is not None and self.list.state() != QAbstractItemView.State.EditingState:
            conversations, searching = self._deferred
            self.set_conversations(conversations, searching=searching)
            self.select(self._selected)

    def _header(self, text: str, font: QFont) -> QListWidgetItem:
        header = QListWidgetItem(text)
        header.setFlags(Qt.ItemFlag.NoItemFlags)  # not selectable: arrow keys pass over it
        header.setFont(font)
        return header

    def _items(self) -> list[QListWidgetItem]:
        items = (self.list.item(i) for i in range(self.list.count()))
        return [item for item in items if item.data(THREAD_ROLE)]

    def thread_ids(self) -> list[str]:
        return [item.data(THREAD_ROLE) for item in self._items()]

    def titles(self) -> list[str]:
        return [item.data(TITLE_ROLE) for item in self._items()]

    def pinned_ids(self) -> list[str]:
        return [item.data(THREAD_ROLE) for item in self._items() if item.data(PINNED_ROLE)]

    def item_for(self, thread_id: str) -> QListWidgetItem | None:
        return self._by_thread.get(thread_id)

    def select(self, thread_id: str | None) -> None:
        """Mark the open conversation (None: a new one, not in the list yet)."""
        self._selected = thread_id
        item = self.item_for(thread_id) if thread_id else None
        self._filling = True
        try:
            if item is None:
                self.list.clearSelection()
                self.list.setCurrentRow(-1)
            else:
                self.list.setCurrentItem(item)
                item.setSelected(True)
                self.list.scrollToItem(item)
        finally:
            self._filling = False

    def current_thread(self) -> str | None:
        item = self.list.currentItem()
        return item.data(THREAD_ROLE) if item is not None else None

    def headers(self) -> list[str]:
        """The group headings shown, in order."""
        items = (self.list.item(i) for i in range(self.list.count()))
        return [item.text() for item in items if not item.data(THREAD_ROLE)]

    def focus_search(self) -> None:
        self.search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search.selectAll()

    def step(self, by: int) -> None:
        """Open the conversation ``by`` rows after the open one (before it when negative), round the list."""
        threads = self.thread_ids()
        if not threads:
            return
        if self._selected in threads:
            target = threads[(threads.index(self._selected) + by) % len(threads)]
        else:
            target = threads[0] if by > 0 else threads[-1]
        item = self._by_thread[target]
        self.list.setCurrentItem(item)
        self.list.scrollToItem(item)
        self._on_activated(item)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.search and event.type() == QEvent.Type.KeyPress:
            assert isinstance(event, QKeyEvent)
            if event.key() == Qt.Key.Key_Down and event.modifiers() == Qt.KeyboardModifier.NoModifier:
                # Down enters the results: the first one becomes current (Enter opens it).
                items = self._items()
                if items:
                    self.list.setFocus(Qt.FocusReason.OtherFocusReason)
                    self.list.setCurrentItem(items[0])
                return True
            escape = event.key() == Qt.Key.Key_Escape and event.modifiers() == Qt.KeyboardModifier.NoModifier
            if escape and self.search.text():
                self.search.clear()
                return True
        return super().eventFilter(watched, event)

    # --- context menu ---------------------------------------------------------------------------------------
    def context_menu(self, thread_id: str) -> QMenu:
        item = self.item_for(thread_id)
        pinned = bool(item.data(PINNED_ROLE)) if item is not None else False
        menu = QMenu(self)
        menu.setObjectName("conversationMenu")
        rename = QAction("Rename…", menu)
        rename.setShortcut("F2")
        rename.triggered.connect(lambda: self._start_rename(thread_id))
        pin = QAction("Unpin" if pinned else "Pin to top", menu)
        pin.triggered.connect(lambda: self.pinRequested.emit(thread_id, not pinned))
        export_md = QAction("Export as Markdown…", menu)
        export_md.triggered.connect(lambda: self.exportRequested.emit(thread_id, "markdown"))
        export_json = QAction("Export as JSON…", menu)
        export_json.triggered.connect(lambda: self.exportRequested.emit(thread_id, "json"))
        delete = QAction("Delete…", menu)
        delete.setShortcut("Del")
        delete.triggered.connect(lambda: self._request_delete(thread_id))
        for action in (rename, pin, export_md, export_json):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(delete)
        return menu

    def _on_context_menu(self, position: QPoint) -> None:
        item = self.list.itemAt(position)
        if item is None:
            return
        self.menu = self.context_menu(item.data(THREAD_ROLE))
        self.menu.popup(self.list.viewport().mapToGlobal(position))  # popup, not exec: no nested event loop

    def _start_rename(self, thread_id: str | None) -> None:
        item = self.item_for(thread_id) if thread_id else None
        if item is None:
            return
        self.list.setCurrentItem(item)
        self.list.editItem(item)

    def _request_delete(self, thread_id: str | None) -> None:
        if thread_id:
            self.deleteRequested.emit(thread_id)

    # --- slots ----------------------------------------------------------------------------------------------
    def _on_activated(self, item: QListWidgetItem) -> None:
        thread_id = item.data(THREAD_ROLE)
        if thread_id and thread_id != self._selected:
            self._selected = thread_id
            self.conversationActivated.emit(thread_id)

    def _activate_first(self) -> None:
        items = self._items()
        if items:
            self.list.setFocus()
            first = items[0]
            self.list.setCurrentItem(first)
            self._on_activated(first)

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if self._filling:
            return
        thread_id = item.data(THREAD_ROLE)
        old = item.data(TITLE_ROLE)
        new = " ".join(item.text().split())
        self._filling = True
        try:
            if new and new != old:
                item.setData(TITLE_ROLE, new)
                self._renamed[thread_id] = (new, time.monotonic())
                # What the item shows now: a refresh that brings another title back must not take it for unchanged.
                self._rows = [replace(r, title=new) if r.thread_id == thread_id else r for r in self._rows]
                self.renameRequested.emit(thread_id, new)
            else:
                new = old
            item.setText(new)
        finally:
            self._filling = False
