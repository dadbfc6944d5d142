"""The conversation as list models for QML: messages, each message's blocks, each code block's chunks.

Three levels so that a streaming reply touches only what changed: the message list gets ``dataChanged`` for the
streaming row alone (its ``text`` role at each flush, every role but ``blocks`` when it finishes: a delegate that
re-read ``blocks`` would rebuild every item of the reply), the reply's block model gets rows appended and its last
rows changed, and the growing code block's chunk model gets its last chunk changed. A message's block model is made
only when a delegate asks for it, so a 5,000-message conversation costs 5,000 small records until the user scrolls.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, ClassVar

from PySide6.QtCore import QAbstractListModel, QByteArray, QModelIndex, QObject, QPersistentModelIndex, Qt, QTimer

from gui.conversation.blocks import (
    Block,
    Chunk,
    StreamSplitter,
    chunk_bounds,
    code_chunks,
    parse_blocks,
    plain_chunk,
    render_chunk,
    split_blocks,
)
from gui.conversation.messages import MessageLike
from gui.markdown import LIGHT, Theme

FLUSH_MS = 30
"""Longest wait between a token's arrival and its appearance (about two frames)."""

CACHE_SIZE = 4_000
Index = QModelIndex | QPersistentModelIndex


class ChunkModel(QAbstractListModel):
    """The chunks of one code block (roles ``text``, ``rich``)."""

    TEXT, RICH = Qt.ItemDataRole.UserRole + 1, Qt.ItemDataRole.UserRole + 2

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.chunks: list[Chunk] = []

    def roleNames(self) -> dict[int, QByteArray]:
        return {self.TEXT: QByteArray(b"text"), self.RICH: QByteArray(b"rich")}

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else len(self.chunks)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        chunk = self.chunks[index.row()]
        return chunk.text if role == self.TEXT else chunk.rich if role == self.RICH else None

    def set_chunks(self, chunks: Sequence[Chunk]) -> None:
        """Show ``chunks``, signalling only the rows that differ (a growing block changes its last one)."""
        old = self.chunks
        common = min(len(old), len(chunks))
        changed = [i for i in range(common) if old[i] != chunks[i]]
        self.chunks[:common] = chunks[:common]
        for i in changed:  # nearly always one row: the last
            self.dataChanged.emit(self.index(i), self.index(i), [self.TEXT, self.RICH])
        if len(chunks) > len(old):
            self.beginInsertRows(QModelIndex(), len(old), len(chunks) - 1)
            self.chunks.extend(chunks[len(old) :])
            self.endInsertRows()
        elif len(chunks) < len(old):
            self.beginRemoveRows(QModelIndex(), len(chunks), len(old) - 1)
            del self.chunks[len(chunks) :]
            self.endRemoveRows()


@dataclass
class _BlockRow:
    block: Block
    chunks: ChunkModel | None = None
    chunk_cache: dict[tuple[int, int], Chunk] = field(default_factory=dict)


class BlockModel(QAbstractListModel):
    """The blocks of one message (roles ``kind``, ``html``, ``language``, ``chunks``)."""

    KIND, HTML, LANGUAGE, CHUNKS, STYLED = (Qt.ItemDataRole.UserRole + n for n in range(1, 6))

    def __init__(self, theme: Theme, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.theme = theme
        self.rows: list[_BlockRow] = []

    def roleNames(self) -> dict[int, QByteArray]:
        return {
            self.KIND: QByteArray(b"kind"),
            self.HTML: QByteArray(b"html"),
            self.LANGUAGE: QByteArray(b"language"),
            self.CHUNKS: QByteArray(b"chunks"),
            self.STYLED: QByteArray(b"styled"),
        }

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        row = self.rows[index.row()]
        if role == self.KIND:
            return row.block.kind
        if role == self.HTML:
            return row.block.html
        if role == self.LANGUAGE:
            return row.block.language
        if role == self.CHUNKS:
            return row.chunks
        if role == self.STYLED:
            return row.block.styled
        return None

    def code(self, row: int) -> str:
        return self.rows[row].block.code if 0 <= row < len(self.rows) else ""

    def set_blocks(self, start: int, blocks: Sequence[Block], *, open_code: bool = False) -> None:
        """Rows ``start`` on become ``blocks``; only rows that differ are signalled. ``open_code``: the last block
        is a code block still being written (its last chunk is shown plain until complete)."""
        for offset, block in enumerate(blocks):
            i = start + offset
            last_open = open_code and offset == len(blocks) - 1
            if i < len(self.rows) and self.rows[i].block.kind == block.kind:
                row = self.rows[i]
                if block.kind == "text":
                    if row.block != block:
                        row.block = block
                        self.dataChanged.emit(self.index(i), self.index(i), [self.HTML, self.STYLED])
                else:
                    if row.block.language != block.language:
                        self.dataChanged.emit(self.index(i), self.index(i), [self.LANGUAGE])
                    row.block = block
                    assert row.chunks is not None
                    row.chunks.set_chunks(self._chunks(row, last_open))
                continue
            row = _BlockRow(block)
            if block.kind == "code":
                row.chunks = ChunkModel(self)
                row.chunks.chunks = self._chunks(row, last_open)
            if i < len(self.rows):  # another kind of block: replace the row
                self.beginRemoveRows(QModelIndex(), i, i)
                old = self.rows.pop(i)
                self.endRemoveRows()
                if old.chunks is not None:
                    old.chunks.deleteLater()
            self.beginInsertRows(QModelIndex(), i, i)
            self.rows.insert(i, row)
            self.endInsertRows()
        stop = start + len(blocks)
        if stop < len(self.rows):
            self.beginRemoveRows(QModelIndex(), stop, len(self.rows) - 1)
            removed = self.rows[stop:]
            del self.rows[stop:]
            self.endRemoveRows()
            for old in removed:
                if old.chunks is not None:
                    old.chunks.deleteLater()

    def _chunks(self, row: _BlockRow, open_code: bool) -> list[Chunk]:
        """The chunks of a row's code; the complete ones are kept from the last call (a growing block renders only
        its new chunks)."""
        block = row.block
        if not open_code:
            return code_chunks(block.code, block.language, self.theme.code_style)
        code = block.code
        bounds = chunk_bounds(code)
        found: list[Chunk] = []
        cache: dict[tuple[int, int], Chunk] = {}
        for n, (a, b) in enumerate(bounds):
            if n == len(bounds) - 1:
                found.append(plain_chunk(code[a:b]))
                break
            chunk = row.chunk_cache.get((a, b)) or render_chunk(code[a:b], b, block.language, self.theme.code_style)
            cache[(a, b)] = chunk
            found.append(chunk)
        row.chunk_cache = cache
        return found


@dataclass
class Entry:
    """One message as the list shows it."""

    id: str
    role: str
    text: str
    stopped: bool = False
    timestamp: str = ""  # the time as shown; when empty, ``created`` is put in words when a card asks for it
    streaming: bool = False
    branch_index: int = 0
    branch_count: int = 1
    reasoning: str = ""
    reasoning_seconds: float = 0.0
    usage: dict[str, float] = field(default_factory=dict)
    blocks: BlockModel | None = None
    created: float | None = None  # when the message was made (seconds since the epoch), if known


def time_words(created: float | None) -> str:
    """When a message was made, as a card shows it: the time today, the day and time before. Asked for by the cards
    on screen only: opening a long conversation formats no time."""
    if created is None:
        return ""
    when = datetime.fromtimestamp(created)
    now = datetime.now()
    if when.date() == now.date():
        return f"{when:%H:%M}"
    year = f" {when.year}" if when.year != now.year else ""
    return f"{when.day} {when:%b}{year}, {when:%H:%M}"


ROLES = (
    "id",
    "role",
    "text",
    "timestamp",
    "streaming",
    "stopped",
    "branchIndex",
    "branchCount",
    "reasoning",
    "reasoningSeconds",
    "usage",
    "blocks",
    "stableBlocks",
)
ALL_STABLE = 1 << 30
"""``stableBlocks`` of a finished message: every block is final."""


class MessageListModel(QAbstractListModel):
    """The messages of one conversation, and the reply streaming at its end."""

    ROLE: ClassVar[dict[str, int]] = {name: Qt.ItemDataRole.UserRole + 1 + n for n, name in enumerate(ROLES)}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.entries: list[Entry] = []
        self.theme = LIGHT
        self._cache: OrderedDict[tuple[str, str, Theme], list[Block]] = OrderedDict()
        self.flush_count = 0
        """How many times the streaming reply was rendered again (tokens between are coalesced)."""
        self._stream_parts: list[str] = []
        self._stream_started = 0.0
        self._splitter: StreamSplitter | None = None
        self._stream_done = 0  # characters of the reply rendered for good
        self._stream_stable_rows = 0  # rows of its block model rendered for good
        self._rendered_len = -1
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush)

    # --- Qt's model API -------------------------------------------------------------------------------------
    def roleNames(self) -> dict[int, QByteArray]:
        return {value: QByteArray(name.encode()) for name, value in self.ROLE.items()}

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.entries)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        entry = self.entries[index.row()]
        r = self.ROLE
        if role == r["blocks"]:
            if entry.blocks is None:  # made on first sight: most messages of a long conversation never are
                entry.blocks = BlockModel(self.theme, self)
                entry.blocks.set_blocks(0, self._blocks_of(entry))
            return entry.blocks
        if role == r["id"]:
            return entry.id
        if role == r["role"]:
            return entry.role
        if role == r["text"] or role == Qt.ItemDataRole.DisplayRole:
            return entry.text
        if role == r["timestamp"]:
            return entry.timestamp or time_words(entry.created)
        if role == r["streaming"]:
            return entry.streaming
        if role == r["stopped"]:
            return entry.stopped
        if role == r["branchIndex"]:
            return entry.branch_index
        if role == r["branchCount"]:
            return entry.branch_count
        if role == r["reasoning"]:
            return entry.reasoning
        if role == r["reasoningSeconds"]:
            return entry.reasoning_seconds
        if role == r["usage"]:
            return entry.usage
        if role == r["stableBlocks"]:  # blocks before this one are final: a streaming reply's growing tail is not
            return self._stream_stable_rows if entry.streaming else ALL_STABLE
        return None

    def _blocks_of(self, entry: Entry) -> list[Block]:
        """A message's blocks, kept for the next open (and for the other conversations opened meanwhile)."""
        key = (entry.id, entry.text, self.theme)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        plain = entry.role == "user" and "```" not in entry.text and "\n    " not in entry.text
        found = self._cache[key] = split_blocks(entry.text, self.theme, plain=plain)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    # --- what the view calls --------------------------------------------------------------------------------
    def set_theme(self, theme: Theme) -> None:
        if theme != self.theme:
            self.theme = theme
            # Every field but the rendered blocks is kept; a streaming reply is the view's to begin again.
            self.reset([replace(e, blocks=None) for e in self.entries if not e.streaming])

    def reset(self, entries: Sequence[Entry]) -> None:
        self._flush_timer.stop()
        self._stream_parts = []
        self._splitter = None
        self.beginResetModel()
        old = self.entries
        self.entries = list(entries)
        self.endResetModel()
        for entry in old:
            if entry.blocks is not None:
                entry.blocks.deleteLater()

    def append(self, entry: Entry) -> None:
        row = len(self.entries)
        self.beginInsertRows(QModelIndex(), row, row)
        self.entries.append(entry)
        self.endInsertRows()

    def extend(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        row = len(self.entries)
        self.beginInsertRows(QModelIndex(), row, row + len(entries) - 1)
        self.entries.extend(entries)
        self.endInsertRows()

    def update(self, row: int, entry: Entry) -> None:
        """Row ``row`` is the same message (same role and text) with other details (its stored id, time, usage):
        they change in place, its blocks stay."""
        old = self.entries[row]
        entry.blocks = old.blocks
        self.entries[row] = entry
        self.dataChanged.emit(self.index(row), self.index(row), [self.ROLE[n] for n in ROLES if n != "blocks"])

    def remove_from(self, row: int) -> None:
        if row >= len(self.entries):
            return
        self.beginRemoveRows(QModelIndex(), row, len(self.entries) - 1)
        removed = self.entries[row:]
        del self.entries[row:]
        self.endRemoveRows()
        for entry in removed:
            if entry.blocks is not None:
                entry.blocks.deleteLater()

    def row_of(self, message_id: str) -> int:
        return next((i for i, e in enumerate(self.entries) if e.id == message_id), -1)

    @property
    def streaming(self) -> bool:
        return self._splitter is not None

    def stream_text(self) -> str:
        return "".join(self._stream_parts)

    def begin_reply(self, text: str = "") -> None:
        self._splitter = StreamSplitter(self.theme)
        self._stream_parts = [text] if text else []
        self._stream_done = self._stream_stable_rows = 0
        self._rendered_len = -1
        self._stream_started = time.perf_counter()
        entry = Entry("stream", "assistant", text, timestamp=time.strftime("%H:%M"), streaming=True)
        entry.blocks = BlockModel(self.theme, self)
        self.append(entry)
        self._flush()

    def append_tokens(self, text: str) -> None:
        """Add streamed text; it is drawn at the next flush (at most ``FLUSH_MS`` later), not now."""
        if self._splitter is None:
            self.begin_reply()
        self._stream_parts.append(text)
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def finish_reply(self, message: MessageLike, usage: dict[str, float] | None = None) -> None:
        """The reply is complete: render its tail as final; what was rendered for good stays as it is."""
        self._flush_timer.stop()
        if self._splitter is None or not self.entries or not self.entries[-1].streaming:
            self.append(Entry(message.id, message.role, message.text, message.stopped, time.strftime("%H:%M")))
            return
        row = len(self.entries) - 1
        entry = self.entries[row]
        blocks = entry.blocks
        assert blocks is not None
        text = self.stream_text()
        if message.text == text:  # the usual case: what streamed is what was stored
            blocks.set_blocks(self._stream_stable_rows, parse_blocks(text[self._stream_done :], self.theme))
        else:
            blocks.set_blocks(0, split_blocks(message.text, self.theme))
        seconds = max(time.perf_counter() - self._stream_started, 1e-3)
        tokens = float(len(self._stream_parts))
        entry.usage = usage if usage is not None else {"tokens": tokens, "perSecond": tokens / seconds}
        entry.id, entry.text, entry.stopped, entry.streaming = message.id, message.text, message.stopped, False
        self._splitter = None
        self._stream_parts = []
        self.dataChanged.emit(self.index(row), self.index(row), [self.ROLE[n] for n in ROLES if n != "blocks"])

    def discard_reply(self) -> str:
        text = self.stream_text()
        self._flush_timer.stop()
        if self._splitter is not None and self.entries and self.entries[-1].streaming:
            self.remove_from(len(self.entries) - 1)
        self._splitter = None
        self._stream_parts = []
        return text

    def _flush(self) -> None:
        splitter = self._splitter
        if splitter is None or not self.entries:
            return
        text = self.stream_text()
        if len(text) == self._rendered_len:
            return
        started = time.perf_counter()
        self._rendered_len = len(text)
        self.flush_count += 1
        row = len(self.entries) - 1
        entry = self.entries[row]
        blocks = entry.blocks
        assert blocks is not None
        self._stream_done, tail = splitter.update(text, self._stream_done)
        shown = [*tail.stable, *tail.tail]
        if tail.open_code is not None:
            shown.append(tail.open_code)
        blocks.set_blocks(self._stream_stable_rows, shown, open_code=tail.open_code is not None)
        self._stream_stable_rows += len(tail.stable)
        entry.text = text
        self.dataChanged.emit(self.index(row), self.index(row), [self.ROLE["text"], self.ROLE["stableBlocks"]])
        # A long reply costs more to render: space the renders out so they never take over the loop.
        spent_ms = (time.perf_counter() - started) * 1000
        self._flush_timer.setInterval(max(FLUSH_MS, round(spent_ms * 3)))
