"""Real screenshots of Cairn for the docs: docs/screenshots/main-window.png (light), main-window-dark.png and
settings.png.

Usage::

    .venv/bin/python tools/screenshots.py              # local storage (the badge says "local")
    .venv/bin/python tools/screenshots.py --pgcluster  # with a throwaway PostgreSQL (the badge says "postgres")

The app runs as it does for a user (``gui.app.CairnApp`` on the selector qasync loop, Qt's xcb platform) inside a
private X server (Xvfb, started and stopped here; on Debian: ``apt-get install xvfb libxcb-icccm4
libxcb-keysyms1 libxcb-cursor0``), on throwaway folders, talking to ``tests.support.model_server.ModelServer`` with
scripted replies (the last one with its reasoning, as a thinking model streams it, then regenerated: the card shows
"Thought for N s" and the "‹ 2 / 2 ›" switcher). The messages are typed into the composer and sent with Enter; the
pictures are what the X server shows of the window and of the settings dialog (``QScreen.grabWindow``), not a
widget rendered off screen. The app runs once per theme (the setting ``THEME``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"
SCREEN = (1280, 860)
WINDOW = (1200, 820)
MODEL = "llama3.1:8b"

EARLIER = [  # (question, reply): conversations already in the list
    ("Plan a three-day trip to Lisbon", "Day 1: Alfama and the castle. Day 2: Belém. Day 3: Sintra."),
    ("What is the difference between TCP and UDP?", "TCP is a reliable byte stream; UDP sends datagrams."),
    ("Suggest a name for a hiking app", "**Cairn**: the stacked stones that mark a trail."),
    ("Explain git rebase in one paragraph", "Rebase replays your commits on top of another branch."),
]
QUESTION = "How do I read a large file line by line in Python without loading it all?"
REPLY = """Iterate over the file object: Python reads it **lazily**, one line at a time, so memory stays flat \
however large the file is.

```python
from pathlib import Path

def count_errors(path: Path) -> int:
    errors = 0
    with path.open(encoding="utf-8") as lines:
        for line in lines:  # one line in memory at a time
            if "ERROR" in line:
                errors += 1
    return errors
```

- `open()` returns an iterator: no `readlines()`, which would load everything.
- Pass `errors="replace"` if the file may contain invalid UTF-8.
- For binary data, read fixed-size chunks with `f.read(65536)` instead.
"""


def _free_display() -> int:
    for number in range(90, 200):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise RuntimeError("no free X display number")


@contextlib.contextmanager
def xvfb() -> Iterator[str]:
    """A private X server; yields its DISPLAY."""
    if shutil.which("Xvfb") is None:
        raise SystemExit("Xvfb is not installed: apt-get install xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0")
    display = f":{_free_display()}"
    server = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{display[1:]}").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Xvfb did not start on {display}")
            time.sleep(0.05)
        yield display
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()


def reply_for(messages: list[dict[str, Any]]) -> str:
    from tests.support.model_server import last_user_text

    question = last_user_text(messages)
    return next((answer for asked, answer in EARLIER if asked == question), REPLY)


async def send(window: Any, text: str) -> None:
    """Type ``text`` into the composer and press Enter; return once the reply is stored and shown."""
    from PySide6.QtCore import QEvent, Qt
    from PySide6.QtGui import QKeyEvent
    from PySide6.QtWidgets import QApplication

    def enter() -> None:
        window.composer.edit.setFocus()
        window.composer.edit.setPlainText(text)
        key = QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Return, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(window.composer.edit, key)

    await reply_to(window, enter)


async def regenerate(window: Any) -> None:
    await reply_to(window, window.regenerate)


async def reply_to(window: Any, action: Callable[[], None]) -> None:
    """Do ``action`` and return once the reply it asks for is stored and shown."""
    finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def done(thread_id: str) -> None:
        if not finished.done():
            finished.set_result(thread_id)

    window.replyFinished.connect(done)
    try:
        action()
        async with asyncio.timeout(30):
            await finished
    finally:
        window.replyFinished.disconnect(done)


async def settle(seconds: float = 0.6) -> None:
    """Let layout, painting and the list refresh happen (a pause for the picture, not a synchronisation)."""
    await asyncio.sleep(seconds)


def grab(widget: Any, path: Path) -> None:
    from PySide6.QtGui import QGuiApplication

    screen = widget.screen() or QGuiApplication.primaryScreen()
    picture = screen.grabWindow(widget.winId())
    if picture.isNull() or not picture.save(str(path)):
        raise RuntimeError(f"could not save {path}")
    print(f"wrote {path.relative_to(ROOT)} ({picture.width()}x{picture.height()})")


async def make_screenshots(cairn: Any, server: Any, theme: str) -> None:
    from PySide6.QtCore import QEvent, QMetaObject, QPointF, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    window = await cairn.start()
    window.resize(*WINDOW)
    window.move(0, 0)
    window.splitter.setSizes([280, WINDOW[0] - 280])
    for question, _reply in EARLIER:
        window.new_chat()
        await send(window, question)
    window.new_chat()
    server.reasoning = REASONING
    await send(window, QUESTION)
    server.token_delay = 0.06  # the version shown streams as a local model would: it thinks for a second or two
    await regenerate(window)  # the reply's second version: the switcher says 2 / 2
    view = window.view
    items = view.list_item()
    QMetaObject.invokeMethod(items, "positionViewAtBeginning")  # the question and the reply from its start
    window.composer.edit.setFocus()
    await settle()
    reply = next(
        (row for row in items.property("contentItem").childItems() if row.property("role") == "assistant"), None
    )
    if reply is not None:  # the mouse over the reply: its toolbar shows (an event sent, not QTest's: it spins
        # a nested event loop, where qasync cannot run the app's tasks)
        point = reply.mapToScene(QPointF(reply.width() / 2, 40))
        move = QMouseEvent(
            QEvent.Type.MouseMove,
            point,
            QPointF(view.surface.mapToGlobal(point.toPoint())),
            Qt.MouseButton.NoButton,
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
        )
        QApplication.sendEvent(view.surface, move)
    await settle()
    grab(window, OUT / ("main-window.png" if theme == "light" else f"main-window-{theme}.png"))

    if theme == "light":
        dialog = window.open_settings()
        await settle()
        grab(dialog, OUT / "settings.png")
        dialog.close()


REASONING = (
    "The user wants to process a big file without reading it all into memory. A file object is an iterator over "
    "its lines, so a for loop is enough; mention the encoding and binary files."
)


def inner(args: argparse.Namespace) -> int:
    """In the X server: start Cairn on throwaway folders and take the pictures."""
    from PySide6.QtWidgets import QApplication

    from gui.app import CairnApp, configure
    from storage.loop import new_qt_loop
    from storage.secrets import SecretStore
    from storage.settings import load_settings, save_settings
    from tests.support.keyring_backend import MemoryKeyring
    from tests.support.model_server import ModelServer

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cairn-screenshots-"))
    cluster: Any = None
    server = ModelServer([MODEL, "qwen2.5:7b"], reply=reply_for, token_delay=0.002).start()
    try:
        keyring = MemoryKeyring()
        values = {
            "MODEL_BASE_URL": server.base_url,
            "MODEL_NAME": MODEL,
            "MODEL_PRESET": "custom",
            "CAIRN_DATA_DIR": str(work / "data"),
            "THEME": args.theme,
        }
        if args.pgcluster:
            import psycopg

            from tests.support.pgcluster import PgCluster

            cluster = PgCluster()  # a private server on a free loopback port, removed at the end
            with psycopg.connect(cluster.url(), autocommit=True) as admin:
                admin.execute("CREATE DATABASE cairn")
            values["POSTGRES_DATABASE_URL"] = cluster.url("cairn")
        save_settings(values, config_dir=work / "config", secrets=SecretStore(backend=keyring))
        settings = load_settings(environ={}, cwd=work, config_dir=work / "config", strict=False)

        app = QApplication.instance() or QApplication(["cairn"])
        assert isinstance(app, QApplication)
        configure(app)
        app.setQuitOnLastWindowClosed(False)
        loop = new_qt_loop(app)
        asyncio.set_event_loop(loop)
        cairn = CairnApp(app, settings=settings, secrets=SecretStore(backend=keyring))

        async def main() -> None:
            try:
                await make_screenshots(cairn, server, args.theme)
            finally:
                app.aboutToQuit.emit()
                await cairn.shutdown()
                if cairn.window is not None:
                    cairn.window.close()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        return 0
    finally:
        server.close()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/screenshots.py", description=__doc__.split("\n")[0])
    parser.add_argument("--pgcluster", action="store_true", help="store in a throwaway PostgreSQL (needs its binaries)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--theme", choices=("light", "dark"), default="light", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        return inner(args)
    with xvfb() as display:
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        for theme in ("light", "dark"):  # a process each: the palette is chosen at start
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--inner",
                "--theme",
                theme,
                *(["--pgcluster"] if args.pgcluster else []),
            ]
            code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
            if code:
                return code
        return 0


if __name__ == "__main__":
    sys.exit(main())
