"""The composer grows with what is typed, up to ten lines, and shows a scrollbar only past them, whatever the
script: a line drawn in a fallback font (Chinese here, from a CJK font the test command installs) is taller than the
primary font's line spacing, and a box sized by that spacing scrolled on the first line of Chinese."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QApplication, QVBoxLayout, QWidget

from gui.app import configure
from gui.composer import MAX_LINES, Composer


@pytest.fixture(scope="module", autouse=True)
def _styled(qapp: QApplication) -> Iterator[None]:
    sheet = qapp.styleSheet()
    configure(qapp)
    yield
    qapp.setStyleSheet(sheet)


@pytest.fixture
def composer(qtbot: Any) -> Iterator[Composer]:
    if not QFontDatabase.families(QFontDatabase.WritingSystem.SimplifiedChinese):
        pytest.fail("no font with Chinese characters: install fonts-wqy-microhei (scripts/test.sh does)")
    window = QWidget()
    qtbot.addWidget(window)
    layout = QVBoxLayout(window)
    layout.addStretch(1)  # as in the window: the composer gets the height it asks for
    widget = Composer()
    layout.addWidget(widget)
    window.resize(600, 900)
    window.show()
    yield widget  # the window stays referenced (and alive) until the test is done
    window.close()


def scrolls(composer: Composer, text: str) -> bool:
    composer.set_text(text)
    QApplication.processEvents()
    QApplication.processEvents()
    return composer.edit.verticalScrollBar().maximum() > 0


@pytest.mark.parametrize(
    "text",
    [
        "你好，世界。这是一个测试句子。",
        "你好\n世界\n再见",
        "Mixed 中文 and English\n第二行",
        "你" * 150,  # wrapped onto several lines
        "\n".join(["一行"] * MAX_LINES),
    ],
)
def test_chinese_text_up_to_ten_lines_never_scrolls(composer: Composer, text: str) -> None:
    assert not scrolls(composer, text)


def test_past_ten_lines_the_box_stops_growing_and_scrolls(composer: Composer) -> None:
    scrolls(composer, "\n".join(["一行"] * MAX_LINES))
    tallest = composer.edit.height()
    assert scrolls(composer, "\n".join(["一行"] * (MAX_LINES + 3)))
    assert composer.edit.height() <= tallest


def test_the_box_shrinks_back_when_the_text_is_sent(composer: Composer) -> None:
    scrolls(composer, "one line")
    single = composer.edit.height()
    scrolls(composer, "\n".join(["一行"] * 5))
    assert composer.edit.height() > single
    composer.submit()
    QApplication.processEvents()
    QApplication.processEvents()
    assert composer.edit.height() == single
