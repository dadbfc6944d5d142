"""Readable colours: the WCAG contrast ratio, and text and link colours moved until they reach it.

A desktop theme's palette is not always readable as it comes: Adwaita-dark under Qt gives links in pure blue (#0000ff)
on dark grey, 1.9:1 where WCAG AA asks 4.5:1 for text; Qt's own Fusion palette draws placeholders at half opacity
(4.0:1) and white on its selection blue (3.6:1). ``readable_changes`` keeps every colour that is readable and moves the
others (towards white on a dark background, towards black on a light one) just far enough, so the theme's hues stay.
``keep_readable`` keeps the application's palette that way.
"""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

MINIMUM = 4.5
"""WCAG 2 level AA for normal text (success criterion 1.4.3)."""
_STEPS = 64

Role = QPalette.ColorRole
TEXT_ROLES: tuple[tuple[QPalette.ColorRole, tuple[QPalette.ColorRole, ...]], ...] = (
    (Role.Text, (Role.Base,)),
    (Role.WindowText, (Role.Window,)),
    (Role.ButtonText, (Role.Button,)),
    (Role.ToolTipText, (Role.ToolTipBase,)),
    (Role.Link, (Role.Base, Role.Window)),
    (Role.LinkVisited, (Role.Base, Role.Window)),
    # Placeholders in the entry fields (on Base), and muted notes drawn in this role on the window (on Window).
    (Role.PlaceholderText, (Role.Base, Role.Window)),
)
"""Each text role and the backgrounds it is drawn on."""


def luminance(colour: QColor) -> float:
    """WCAG relative luminance of an opaque sRGB colour."""

    def channel(value: float) -> float:
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(colour.redF()) + 0.7152 * channel(colour.greenF()) + 0.0722 * channel(colour.blueF())


def over(colour: QColor, background: QColor) -> QColor:
    """``colour`` as drawn on ``background`` (a placeholder's half opacity is part of how it reads)."""
    alpha = colour.alphaF()
    if alpha >= 1.0:
        return QColor(colour.red(), colour.green(), colour.blue())
    return blend(background, colour, alpha)


def blend(a: QColor, b: QColor, amount: float) -> QColor:
    """``a`` moved ``amount`` (0..1) of the way to ``b``, opaque."""
    return QColor(
        round(a.red() + (b.red() - a.red()) * amount),
        round(a.green() + (b.green() - a.green()) * amount),
        round(a.blue() + (b.blue() - a.blue()) * amount),
    )


def contrast(foreground: QColor, background: QColor) -> float:
    """The WCAG contrast ratio of ``foreground`` drawn on ``background`` (1 to 21)."""
    base = over(background, QColor("#ffffff"))
    hi, lo = sorted((luminance(over(foreground, base)), luminance(base)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def readable(colour: QColor, backgrounds: Iterable[QColor], minimum: float = MINIMUM) -> QColor:
    """``colour`` if it reaches ``minimum`` on every background; else the least change of it that does, moving
    towards white or black (whichever the backgrounds contrast with better); white or black at worst."""
    grounds = [over(b, QColor("#ffffff")) for b in backgrounds]
    if not grounds or all(contrast(colour, b) >= minimum for b in grounds):
        return colour
    start = over(colour, grounds[0])
    targets = sorted((QColor("#ffffff"), QColor("#000000")), key=lambda t: -min(contrast(t, b) for b in grounds))
    for target in targets:
        for step in range(1, _STEPS + 1):
            moved = blend(start, target, step / _STEPS)
            if all(contrast(moved, b) >= minimum for b in grounds):
                return moved
    return targets[0]


Change = dict[tuple[QPalette.ColorGroup, QPalette.ColorRole], QColor]


def readable_changes(palette: QPalette) -> Change:
    """The roles of ``palette`` that must change to be readable, and their new colours (empty: readable as it is)."""
    changes: Change = {}
    for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive):
        for role, grounds in TEXT_ROLES:
            colour = palette.color(group, role)
            better = readable(colour, [palette.color(group, g) for g in grounds])
            if better != colour:
                changes[(group, role)] = better
        # The selection: keep its text colour (usually white) and deepen the highlight behind it instead.
        highlight = palette.color(group, Role.Highlight)
        behind = readable(highlight, [palette.color(group, Role.HighlightedText)])
        if behind != highlight:
            changes[(group, Role.Highlight)] = behind
    return changes


_applied: list[QPalette] = []  # the palette keep_readable set last
_replaced: dict[tuple[QPalette.ColorGroup, QPalette.ColorRole], tuple[QColor, QColor]] = {}  # -> (ours, theme's)


def keep_readable(app: QApplication) -> bool:
    """Make the application's palette readable (``readable_changes``) unless it is what this set last; True when it
    changed it. Called when the window is made and whenever the palette changes (a switch to a dark theme).

    The application's palette, not a window's: Qt draws a label's links in the application's link colour whatever
    the label's palette says, and a style sheet (resources/style.qss) fixes each widget's palette when it polishes
    the widget, so a window's palette no longer reaches widgets already polished. The style sheet is set again after
    the change for that reason: each widget is polished anew, with the new colours."""
    current = app.palette()
    if _applied and current == _applied[0]:
        return False  # the change was ours
    theme = QPalette(current)
    for (group, role), (ours, original) in _replaced.items():
        if theme.color(group, role) == ours:
            theme.setColor(group, role, original)  # still ours: start from the theme's own colour
    changes = readable_changes(theme)
    _replaced.clear()
    merged = QPalette(theme)
    for (group, role), colour in changes.items():
        _replaced[(group, role)] = (colour, theme.color(group, role))
        merged.setColor(group, role, colour)
    _applied[:] = [merged]
    if merged == current:
        return False
    app.setPalette(merged)
    _applied[:] = [app.palette()]
    if app.styleSheet():
        app.setStyleSheet(app.styleSheet())
    return True
