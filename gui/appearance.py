"""How the window looks by the user's choice (settings THEME and FONT_SIZE): light, dark or the desktop's, and the
text size. Applied to the application, at start and whenever the settings change; gui/contrast.py then keeps every
text and link readable on the palette chosen (the window listens for the palette change)."""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication
from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

_desktop: tuple[QPalette, QFont] | None = None  # what the desktop gave, to go back to "system"

_DARK = {
    QPalette.ColorRole.Window: "#242424",
    QPalette.ColorRole.WindowText: "#f0f0f0",
    QPalette.ColorRole.Base: "#1e1e1e",
    QPalette.ColorRole.AlternateBase: "#2a2a2a",
    QPalette.ColorRole.Text: "#f0f0f0",
    QPalette.ColorRole.Button: "#303030",
    QPalette.ColorRole.ButtonText: "#f0f0f0",
    QPalette.ColorRole.ToolTipBase: "#303030",
    QPalette.ColorRole.ToolTipText: "#f0f0f0",
    QPalette.ColorRole.PlaceholderText: "#a0a0a0",
    QPalette.ColorRole.Highlight: "#3584e4",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#78aeed",
    QPalette.ColorRole.LinkVisited: "#c0a0f0",
    QPalette.ColorRole.BrightText: "#ffffff",
}
_LIGHT = {
    QPalette.ColorRole.Window: "#f6f5f4",
    QPalette.ColorRole.WindowText: "#1e1e1e",
    QPalette.ColorRole.Base: "#ffffff",
    QPalette.ColorRole.AlternateBase: "#f0f0f0",
    QPalette.ColorRole.Text: "#1e1e1e",
    QPalette.ColorRole.Button: "#ededed",
    QPalette.ColorRole.ButtonText: "#1e1e1e",
    QPalette.ColorRole.ToolTipBase: "#ffffff",
    QPalette.ColorRole.ToolTipText: "#1e1e1e",
    QPalette.ColorRole.PlaceholderText: "#6b6b6b",
    QPalette.ColorRole.Highlight: "#1c71d8",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#1a5fb4",
    QPalette.ColorRole.LinkVisited: "#613583",
    QPalette.ColorRole.BrightText: "#000000",
}
THEMES = {"light": _LIGHT, "dark": _DARK}


def palette_of(theme: str, base: QPalette) -> QPalette:
    """``base`` with the colours of ``theme`` (light or dark; anything else gives ``base``)."""
    colours = THEMES.get(theme)
    palette = QPalette(base)
    if colours is None:
        return palette
    for role, colour in colours.items():
        palette.setColor(QPalette.ColorGroup.All, role, QColor(colour))
    disabled = QColor(colours[QPalette.ColorRole.PlaceholderText])
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return palette


def apply_appearance(app: QCoreApplication, theme: str, font_size: int) -> None:
    """Light, dark or the desktop's colours, and the text size in points (0: the desktop's). Nothing to do without
    widgets (a QCoreApplication)."""
    global _desktop
    if not isinstance(app, QApplication):
        return
    if _desktop is None:
        _desktop = (QPalette(app.palette()), QFont(app.font()))
    palette, font = _desktop
    wanted = palette_of(theme, palette)
    if app.palette() != wanted:
        app.setPalette(wanted)
    sized = QFont(font)
    if font_size > 0:
        sized.setPointSize(font_size)
    if app.font() != sized:
        app.setFont(sized)
