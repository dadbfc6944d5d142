"""Every text and link in the window reads at 4.5:1 or more (WCAG AA) against what it is drawn on, under a light and
a dark palette, and after a switch from one to the other.

The real app (``CairnApp``, offscreen) with real storage (SQLite, and Postgres so the badge says Synced) shows a
conversation whose reply holds a link and a code block, so the code block's Copy button is drawn. The colours are
read from what the window draws: each visible text item of the conversation's cards (each fragment of its rich text,
links in the item's link colour) with the rectangle painted behind it (a card, a code block, the scene), each
widget's palette as Qt draws it. The dark palette is Adwaita-dark's as
Qt gets it on GNOME: links in pure blue on dark grey.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPalette, QTextDocument
from PySide6.QtQuick import QQuickItem
from PySide6.QtWidgets import QApplication, QWidget

from gui.contrast import MINIMUM, contrast, readable, readable_changes
from gui.main_window import MainWindow
from tests.support.app import (
    WAIT,
    cairn_factory,
    send_and_wait,
    window_of,
)
from tests.support.cards import AUTO, RICH, STYLED, card, in_order, text_format, written
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


def _scene_rect(item: QQuickItem) -> QRectF:
    return item.mapRectToScene(QRectF(0, 0, item.width(), item.height()))


def _behind(painted: list[QQuickItem], item: QQuickItem) -> QColor:
    """The colour of the last opaque rectangle painted before ``item`` under its middle (the scene's own first)."""
    middle = _scene_rect(item).center()
    for candidate in reversed(painted):
        colour = candidate.property("color")
        if isinstance(colour, QColor) and colour.alpha() == 255 and _scene_rect(candidate).contains(middle):
            return colour
    raise AssertionError(f"nothing painted behind {item}")


def _fragments(item: QQuickItem) -> list[tuple[str, QColor]]:
    """(kind and words, colour) of each run of a text item: rich text's own colours, links in the link colour."""
    colour = item.property("color")
    text = str(item.property("text") or "")
    form = text_format(item)
    if not (form in (RICH, STYLED) or (form == AUTO and "<" in text)):
        return [(f"text: {text[:30]!r}", colour)]
    document = QTextDocument()
    document.setHtml(text)
    found = []
    block = document.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.isValid() and fragment.text().strip():  # spaces draw nothing
                fmt = fragment.charFormat()
                words = fragment.text()[:30]
                if fmt.isAnchor():
                    # Text draws links in its linkColor, TextEdit in the colour the HTML gives them.
                    link = _brush(fmt.foreground()) or item.property("linkColor")
                    assert isinstance(link, QColor), f"a link drawn in no known colour: {words!r}"
                    found.append((f"link {fmt.anchorHref()[:60]}: {words!r}", link))
                else:
                    found.append((f"text: {words!r}", _brush(fmt.foreground()) or colour))
            it += 1
        block = block.next()
    return found


def card_pairs(window: MainWindow) -> list[tuple[str, QColor, QColor]]:
    """(what, text colour, background) of every visible run of text in the conversation's scene, in the order it is
    painted (a rectangle painted before a text, under it, is its background)."""
    painted: list[QQuickItem] = []
    pairs = []
    for item in in_order(window.view.quick.rootObject()):
        if not item.isVisible():
            continue
        if written(item) and str(item.property("text") or "").strip():
            ground = _behind(painted, item)
            pairs.extend((f"chat {what}", colour, ground) for what, colour in _fragments(item))
        elif item.inherits("QQuickRectangle"):
            painted.append(item)
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
    pairs = card_pairs(window)
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
    pairs.append(role_pair("branch note", window.branch_note.label, Role.WindowText, Role.Window))
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
    drawn = [what for what, _f, _b in pairs]
    assert any(w.startswith("chat link https://example.com/docs") for w in drawn), drawn  # drawn at all
    assert "chat text: 'Copy'" in drawn and "chat text: 'print'" in drawn, drawn  # the code's Copy, its colours
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
        await card(window.view, window.view.messages()[-1].id)
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
