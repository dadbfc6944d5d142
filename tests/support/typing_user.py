"""Cairn started as ``main.py`` starts it, with a user at the keyboard: ``python -m tests.support.typing_user TEXT
[ARGS]``.

Runs ``main.main(ARGS)`` unchanged; the only addition is the user: once the window is ready, TEXT is typed into the
composer with real key events and sent with Return. Prints one JSON line per step, for the test to wait on:
``{"sent": thread}`` once the message is on its way, ``{"reply": text}`` each time the shown reply changed.
"""

from __future__ import annotations

import json
import sys

from PySide6.QtCore import Qt, QTimer
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

import main as cairn_main
from gui.main_window import MainWindow


def say(data: object) -> None:
    print(json.dumps(data), flush=True)


class User:
    def __init__(self, app: QApplication, text: str) -> None:
        self.app = app
        self.text = text
        self.sent = False
        self.thread = ""
        self.reply = ""
        self.timer = QTimer(app)
        self.timer.setInterval(50)
        self.timer.timeout.connect(self.look)
        self.timer.start()

    def window(self) -> MainWindow | None:
        return next((w for w in self.app.topLevelWidgets() if isinstance(w, MainWindow)), None)

    def look(self) -> None:
        window = self.window()
        if window is None or window.service is None:
            return  # not ready: the chat engine loads after the window shows
        if not self.sent:
            self.sent = True
            edit = window.composer.edit
            edit.setFocus()
            QTest.keyClicks(edit, self.text)
            QTest.keyClick(edit, Qt.Key.Key_Return)
            return
        if not self.thread and window.current:
            self.thread = window.current
            say({"sent": self.thread})
        view = window.view
        shown = [m.text for m in view.messages() if m.role == "assistant"]
        reply = view.stream_text() if view.streaming else (shown[-1] if shown else "")
        if reply != self.reply:
            self.reply = reply
            say({"reply": reply})


if __name__ == "__main__":
    qt_app = QApplication(sys.argv[:1])  # gui.app.run uses this one
    user = User(qt_app, sys.argv[1])
    sys.exit(cairn_main.main(sys.argv[2:]))
