"""Readable colours: the WCAG contrast ratio, and text and link colours moved until they reach it.

A desktop theme's palette is not always readable as it comes: Adwaita-dark under Qt gives links in pure blue (#0000ff)
on dark grey, 1.9:1 where WCAG AA asks 4.5:1 for text; Qt's own Fusion palette draws placeholders at half opacity
(4.0:1) and white on its selection blue (3.6:1). ``readable_roles`` keeps every colour that is readable and moves the
others (towards white on a dark background, towards black on a light one) just far enough, so the theme's hues stay.
"""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtGui import QColor, QPalette

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


def readable_roles(palette: QPalette) -> QPalette:
    """A palette holding only the roles of ``palette`` that had to change to be readable (set it on a widget: the
    roles it leaves unset keep following the application's palette)."""
    fixed = QPalette()
    fixed.setResolveMask(0)
    for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive):
        for role, grounds in TEXT_ROLES:
            colour = palette.color(group, role)
            better = readable(colour, [palette.color(group, g) for g in grounds])
            if better != colour:
                fixed.setColor(group, role, better)
        # The selection: keep its text colour (usually white) and deepen the highlight behind it instead.
        highlight = palette.color(group, Role.Highlight)
        behind = readable(highlight, [palette.color(group, Role.HighlightedText)])
        if behind != highlight:
            fixed.setColor(group, Role.Highlight, behind)
    return fixed
