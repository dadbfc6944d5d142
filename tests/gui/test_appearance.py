"""The user's choice of look (settings THEME and FONT_SIZE, in Settings → Appearance): light, dark or the desktop's
colours and the text size, applied at start and when the settings change, without a restart; "system" goes back
to what the desktop gave."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtGui import QPalette
from PySide6.QtQuick import QQuickItem
from PySide6.QtWidgets import QApplication

from gui.appearance import apply_appearance
from gui.contrast import contrast
from storage.settings import load_settings, save_settings
from tests.support.app import cairn_factory, until, window_of
from tests.support.model_server import ModelServer


@pytest.fixture(autouse=True)
def _desktop_look_afterwards(qapp: QApplication) -> Iterator[None]:
    yield
    apply_appearance(qapp, "system", 0)  # the process's one application: the next test finds it as it was


def lightness(role: QPalette.ColorRole) -> float:
    return QApplication.palette().color(role).lightnessF()


async def test_dark_and_a_larger_text_at_start_then_light_without_a_restart(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    desktop_size = QApplication.font().pointSize()
    async with cairn_factory(tmp_path, server, settings={"THEME": "dark", "FONT_SIZE": desktop_size + 4})() as app:
        window = window_of(app)
        assert lightness(QPalette.ColorRole.Window) < 0.2 and lightness(QPalette.ColorRole.WindowText) > 0.8
        assert QApplication.font().pointSize() == desktop_size + 4
        assert window.font().pointSize() == desktop_size + 4
        note = window.view.quick.rootObject().findChild(QQuickItem, "note")  # the conversation's text, in Qt Quick
        assert note is not None and note.isVisible()
        assert note.property("font").pointSizeF() == desktop_size + 4
        palette = QApplication.palette()
        link = palette.color(QPalette.ColorRole.Link)
        assert contrast(link, palette.color(QPalette.ColorRole.Base)) >= 4.5  # kept readable (gui/contrast.py)

        config = tmp_path / "config"
        assert app.secrets is not None
        save_settings({"THEME": "light", "FONT_SIZE": 0}, config_dir=config, secrets=app.secrets)
        await app.apply_settings(load_settings(environ={}, cwd=tmp_path, config_dir=config, strict=False))
        assert lightness(QPalette.ColorRole.Window) > 0.8 and lightness(QPalette.ColorRole.WindowText) < 0.2
        assert QApplication.font().pointSize() == desktop_size
        await until(lambda: note.property("font").pointSizeF() == desktop_size, "the cards' text at the new size")
