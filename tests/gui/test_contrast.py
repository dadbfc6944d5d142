"""Every text and link in the window reads at 4.5:1 or more (WCAG AA) against what it is drawn on, under a light and
a dark palette, and after a switch from one to the other.

The real app (``CairnApp``, offscreen) with real storage (SQLite, and Postgres so the badge says Synced) shows a
conversation whose reply holds a link and a code block, so the message actions (Copy, Edit, Regenerate) and the code
block's Copy are drawn. The colours are read from what the window uses: each fragment of the conversation's document
with the frame, table or block behind it, each widget's palette as Qt draws it. The dark palette is Adwaita-dark's as
Qt gets it on GNOME: links in pure blue on dark grey.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QPalette, QTextCursor, QTextDocument
from PySide6.QtWidgets import QApplication, QWidget

from gui.chat_view import ChatView, action_href
from gui.contrast import MINIMUM, contrast, readable, readable_changes
from gui.main_window import MainWindow
from tests.support.app import (
    WAIT,
    cairn_factory,
    send_and_wait,
    window_of,
)
from tests.support.model_server import ModelServer
from tests.support.waiting import eventually

Role = QPalette.ColorRole
STYLE_SHEET = Path(__file__).resolve().parents[2] / "resources" / "style.qss"
REPLY = (
    "See [the docs](https://example.com/docs) and this:\n\n"
    "```python\n# say hello\nprint('hi')  # to everyone\n```\n\n"
    "> quoted, with `inline code`\n"
)


def light_palette() -> QPalette:
    """Qt's own Fusion palette (what Qt draws with when the desktop gives none): half-opaque placeholders, white on
    a mid blue selection."""
    style = QApplication.style()
    return style.standardPalette()


def dark_palette() -> QPalette:
    """Adwaita-dark as Qt applications get it on GNOME: dark greys, white text, and the link colour left at pure
    blue (1.4:1 to 1.9:1 on those greys)."""
    palette = QPalette(QColor("#303030"), QColor("#242424"))
    for role, colour in (
        (Role.Window, "#242424"),
        (Role.WindowText, "#ffffff"),
        (Role.Base, "#1e1e1e"),
        (Role.AlternateBase, "#2a2a2a"),
        (Role.Text, "#ffffff"),
        (Role.Button, "#303030"),
        (Role.ButtonText, "#ffffff"),
        (Role.Highlight, "#3584e4"),
        (Role.HighlightedText, "#ffffff"),
        (Role.Link, "#0000ff"),
        (Role.LinkVisited, "#0000ff"),
        (Role.ToolTipBase, "#262626"),
        (Role.ToolTipText, "#ffffff"),
    ):
        palette.setColor(role, QColor(colour))
    return palette


PALETTES = {"light": light_palette, "dark": dark_palette}


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as model_server:
        model_server.reply = REPLY
        yield model_server


@pytest.fixture
def app_palette(qapp: QApplication) -> Iterator[Any]:
    """Set the application's palette (as the desktop would), with the app's style sheet on (``gui.app.configure``
    sets it: its rules take colours from the palette); the previous palette and style sheet come back after."""
    previous, sheet = QPalette(qapp.palette()), qapp.styleSheet()
    qapp.setStyleSheet(STYLE_SHEET.read_text(encoding="utf-8"))
    yield lambda palette: qapp.setPalette(palette)
    qapp.setStyleSheet(sheet)
    qapp.setPalette(previous)


# --------------------------------------------------------------------------------------------- reading colours


def _brush(brush: QBrush) -> QColor | None:
    return brush.color() if brush.style() != Qt.BrushStyle.NoBrush else None


def _behind(document: QTextDocument, position: int, base: QColor) -> QColor:
    """What is painted behind the character at ``position``: its block, table cell, table or frame, else the base."""
    cursor = QTextCursor(document)
    cursor.setPosition(position)
    if (colour := _brush(cursor.blockFormat().background())) is not None:
        return colour
    table = cursor.currentTable()
    if table is not None and (colour := _brush(table.cellAt(cursor).format().background())) is not None:
        return colour
    frame = cursor.currentFrame()
    while frame is not None:
        if (colour := _brush(frame.frameFormat().background())) is not None:
            return colour
        frame = frame.parentFrame()
    return base


def document_pairs(view: ChatView) -> list[tuple[str, QColor, QColor]]:
    """(what, text colour, background) of every visible fragment of the conversation, links included."""
    palette = view.palette()
    base, text = palette.color(Role.Base), palette.color(Role.Text)
    document = view.document()
    pairs = []
    block = document.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.isValid() and fragment.text().strip():  # spaces draw nothing
                fmt = fragment.charFormat()
                foreground = _brush(fmt.foreground()) or text
                background = _brush(fmt.background()) or _behind(document, fragment.position(), base)
                kind = f"link {fmt.anchorHref()[:80]}" if fmt.isAnchor() else "text"
                pairs.append((f"chat {kind}: {fragment.text()[:30]!r}", foreground, background))
            it += 1
        block = block.next()
    return pairs


def drawn_pixels(widget: QWidget, colour: QColor) -> int:
    """How many pixels of ``widget`` are painted exactly in ``colour``."""
    image = widget.grab().toImage()
    return sum(image.pixelColor(x, y) == colour for x in range(image.width()) for y in range(image.height()))


def role_pair(what: str, widget: QWidget, text: QPalette.ColorRole, ground: QPalette.ColorRole) -> tuple:
    palette = widget.palette()
    return (what, palette.color(text), palette.color(ground))


def window_pairs(window: MainWindow) -> list[tuple[str, QColor, QColor]]:
    sidebar = window.sidebar
    pairs = document_pairs(window.view)
    # The conversation list is drawn on the window colour (resources/style.qss); its selection on the highlight.
    for row in range(sidebar.list.count()):
        item = sidebar.list.item(row)
        colour = _brush(item.foreground()) or sidebar.list.palette().color(Role.Text)
        pairs.append((f"list item {item.text()!r}", colour, sidebar.list.palette().color(Role.Window)))
    pairs.append(role_pair("selected list item", sidebar.list, Role.HighlightedText, Role.Highlight))
    pairs.append(role_pair("New chat button", sidebar.new_button, Role.ButtonText, Role.Button))
    pairs.append(role_pair("search placeholder", sidebar.search, Role.PlaceholderText, Role.Base))
    pairs.append(role_pair("search text", sidebar.search, Role.Text, Role.Base))
    pairs.append(role_pair("empty-list note", sidebar.empty_label, sidebar.empty_label.foregroundRole(), Role.Window))
    pairs.append(role_pair("composer placeholder", window.composer.edit, Role.PlaceholderText, Role.Base))
    pairs.append(role_pair("composer text", window.composer.edit, Role.Text, Role.Base))
    pairs.append(role_pair("branch note", window.branch_note, Role.WindowText, Role.Window))
    pairs.append(role_pair("menu bar", window.menuBar(), Role.WindowText, Role.Window))
    pairs.append(role_pair("status bar message", window.statusBar(), Role.WindowText, Role.Window))
    pairs.append(role_pair("model label", window.model_label, Role.WindowText, Role.Window))
    # Qt draws a label's links in the application's link colour (not the label's): the glyphs show which it is.
    link = QApplication.palette().color(Role.Link)
    assert drawn_pixels(window.model_label, link) > 10, "the model's name is drawn in the application's link colour"
    pairs.append(("model label link", link, window.statusBar().palette().color(Role.Window)))
    background, text = window.badge.colors()
    pairs.append((f"badge {window.badge.text()!r}", text, background))
    return pairs


def unreadable(window: MainWindow) -> list[str]:
    pairs = window_pairs(window)
    assert any(what.startswith("chat link cairn:") and "/code/" in what for what, _f, _b in pairs)  # drawn at all
    return [
        f"{what}: {fg.name(QColor.NameFormat.HexArgb)} on {bg.name()} = {contrast(fg, bg):.2f}"
        for what, fg, bg in pairs
        if contrast(fg, bg) < MINIMUM
    ]


# --------------------------------------------------------------------------------------------- the tests


def test_the_contrast_ratio_is_wcags() -> None:
    assert contrast(QColor("#000000"), QColor("#ffffff")) == pytest.approx(21.0)
    assert contrast(QColor("#ffffff"), QColor("#ffffff")) == pytest.approx(1.0)
    assert contrast(QColor("#767676"), QColor("#ffffff")) == pytest.approx(4.54, abs=0.01)  # the AA grey
    assert contrast(QColor("#0000ff"), QColor("#1e1e1e")) == pytest.approx(1.94, abs=0.01)
    assert contrast(QColor(0, 0, 0, 128), QColor("#ffffff")) == pytest.approx(4.0, abs=0.02)  # drawn half opaque
    moved = readable(QColor("#0000ff"), [QColor("#1e1e1e"), QColor("#242424")])
    assert contrast(moved, QColor("#242424")) >= MINIMUM and moved.blue() == 255  # lighter, still blue
    assert readable(QColor("#1a5fb4"), [QColor("#ffffff")]) == QColor("#1a5fb4")  # readable: kept as it is
    assert readable_changes(light_palette())  # Fusion's palette needs moving too


@pytest.mark.postgres
@pytest.mark.parametrize(("first", "then"), [("light", "dark"), ("dark", "light")])
async def test_every_text_and_link_in_the_window_is_readable(
    first: str,
    then: str,
    app_palette: Any,
    pg_url: str,
    tmp_path: Path,
    server: ModelServer,
    qtbot: Any,
) -> None:
    app_palette(PALETTES[first]())
    cairn = cairn_factory(tmp_path, server, settings={"POSTGRES_DATABASE_URL": pg_url})
    async with cairn() as app:
        window = window_of(app)
        await eventually(lambda: window.badge.text().startswith("Synced · "), WAIT, "the badge says Synced")
        await send_and_wait(qtbot, window, "links and code, please")
        reply = window.view.messages()[-1]
        for href in (action_href("copy", reply.id), action_href("regenerate"), action_href("code", reply.id, "0")):
            assert href in window.view.hrefs()
        window.show_status("Copied the code.", 60_000)
        assert unreadable(window) == [], first

        # The desktop switches theme while Cairn runs: everything is drawn again, readable in the new palette.
        app_palette(PALETTES[then]())
        await eventually(
            lambda: window.view.palette().color(Role.Base) == PALETTES[then]().color(Role.Base),
            WAIT,
            "the view took the new palette",
        )
        with contextlib.suppress(AssertionError):  # the assertion below says what is unreadable
            await eventually(lambda: not unreadable(window), WAIT, "everything readable in the new palette")
        assert unreadable(window) == [], then
