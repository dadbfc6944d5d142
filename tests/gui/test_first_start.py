"""Starting Cairn on Linux, as a new user does: ``scripts/app.sh`` and ``main.py`` run as processes.

- Without a desktop session the app says so plainly (and that ``doctor`` works without one) instead of Qt's abort
  blaming a plugin; a DISPLAY no X server answers at is said plainly too.
- Qt's X11 plugin needs libraries a bare Debian lacks: gui/display.py names the Debian package of each (checked
  against this machine's ``dpkg``), which ``scripts/app.sh`` installs and docs/INSTALL.md lists.
- ``scripts/app.sh`` runs pip only when the project's dependencies changed (a throwaway copy of the checkout, with a
  venv that sees this one's packages; pip's own log tells whether it ran).
- Losing the display (a real Xvfb, killed; or the HUP a logout sends) while a reply streams from a real model server:
  the app stores what it has, closes storage and exits within seconds; the SQLite file holds the conversation and
  was closed cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.endpoints import Endpoint
from chat.service import ConversationService
from gui.display import XCB_PACKAGES, missing_libraries, missing_message, xcb_plugin
from storage.factory import Storage
from storage.manager import StorageManager
from storage.tiered import TieredSaver
from tests.support.model_server import ModelServer
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0
"""For the app to start and answer (imports take seconds on a busy machine)."""
EXIT_BOUND = 10.0
"""Separates an app that hangs from a slow one: closing storage takes well under a second."""
TEXT = "Tell me about cairns on the ridge"
SHOWN = "Echo: Tell "
"""The reply's first two tokens: all the model server sends before the display is lost."""


def app_env(**extra: str) -> dict[str, str]:
    """The environment of a user's terminal: no display unless given, no Cairn, Postgres or model settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CAIRN_", "POSTGRES_", "MODEL_", "QT_"))
        and k not in ("DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY")
    }
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"  # no Secret Service to wait for
    env.update(extra)
    return env


def run_main(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


@contextlib.contextmanager
def xvfb() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real X server on a display number it picks itself (``-displayfd``: written once it accepts clients)."""
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-nolisten", "tcp", "-screen", "0", "1280x800x24"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    number = ""
    try:
        ready, _, _ = select.select([read], [], [], 30)
        number = os.read(read, 64).decode().strip() if ready else ""
        assert number, "Xvfb did not start"
        yield f":{number}", server
    finally:
        os.close(read)
        if server.poll() is None:
            server.terminate()
        server.wait()
        lock = Path(f"/tmp/.X{number}-lock")
        with contextlib.suppress(OSError, ValueError):
            if number and int(lock.read_text().strip()) == server.pid:  # a killed server leaves them behind
                Path(f"/tmp/.X11-unix/X{number}").unlink(missing_ok=True)
                lock.unlink()


# --- no desktop session ------------------------------------------------------------------------------------------


def test_without_a_desktop_session_main_says_so_and_points_at_doctor(tmp_path: Path) -> None:
    result = run_main(tmp_path, env=app_env(CAIRN_CONFIG_DIR=str(tmp_path / "config")))
    assert result.returncode != 0
    assert "Cairn needs a desktop session" in result.stderr, result.stderr[-3000:]
    assert "`scripts/app.sh doctor` (or `python main.py doctor`) works without one" in result.stderr
    assert "Reinstalling the application" not in result.stderr
    assert not (tmp_path / "config").exists()  # it stopped before starting anything

    # doctor, as said, works without one.
    doctor = run_main(
        tmp_path,
        "doctor",
        env=app_env(CAIRN_CONFIG_DIR=str(tmp_path / "config"), CAIRN_DATA_DIR=str(tmp_path / "data")),
    )
    assert doctor.returncode == 0, doctor.stderr[-3000:]


def test_a_display_no_x_server_answers_at_is_said_plainly(tmp_path: Path) -> None:
    with xvfb() as (display, server):
        server.terminate()  # a display number that was just free, and is again: nobody answers there
        server.wait()
        result = run_main(tmp_path, env=app_env(DISPLAY=display, CAIRN_CONFIG_DIR=str(tmp_path / "config")))
    assert result.returncode != 0
    assert f"no X server accepts connections at DISPLAY={display}" in result.stderr, result.stderr[-3000:]
    assert "Cairn needs a desktop session" in result.stderr
    assert "Reinstalling the application" not in result.stderr


# --- the libraries Qt's xcb plugin needs ----------------------------------------------------------------------------


def dpkg_owner(path: str) -> str:
    """The Debian package that installed ``path`` (the file itself, or the symlink ldd found)."""
    for candidate in (path, os.path.realpath(path)):
        found = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            return found.stdout.split(":", 1)[0]
    raise AssertionError(f"dpkg knows no package holding {path}")


def test_every_library_of_qts_xcb_plugin_is_named_with_its_debian_package() -> None:
    plugin = xcb_plugin()
    assert plugin is not None and plugin.is_file()
    ldd = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, check=True).stdout
    resolved = {}
    for line in ldd.splitlines():
        name, _, where = line.strip().partition(" => ")
        path = where.split(" (")[0].strip()
        if path.startswith("/") and "PySide6" not in path:
            resolved[name] = path
    # The X11, OpenGL and font libraries (not the C runtime, nor what those pull in themselves).
    needed = {name for name in resolved if name.startswith(("libxcb", "libX", "libxkb", "libGL", "libEGL", "libfont"))}
    assert {"libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxkbcommon-x11.so.0"} <= needed
    assert needed <= set(XCB_PACKAGES), f"not in gui.display.XCB_PACKAGES: {sorted(needed - set(XCB_PACKAGES))}"
    for name in sorted(needed):
        assert XCB_PACKAGES[name] == dpkg_owner(resolved[name]), name
    # What app.sh asks for on this machine: nothing missing, nothing to install.
    assert missing_libraries() == []
    packages = subprocess.run(
        [sys.executable, "-m", "gui.display", "packages"],
        cwd=ROOT,
        env=app_env(DISPLAY=":0"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert packages.stdout.strip() == ""
    # And a machine lacking some is told the exact command.
    message = missing_message(["libxcb-cursor.so.0", "libxcb-icccm.so.4"])
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4\n" in message
    # docs/INSTALL.md lists every package.
    install = (ROOT / "docs" / "INSTALL.md").read_text(encoding="utf-8")
    assert all(f"`{package}`" in install or f" {package}" in install for package in set(XCB_PACKAGES.values()))


# --- pip only when the dependencies changed ---------------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of this checkout whose .venv sees this venv's packages (so pip installs only Cairn itself)."""
    copy = tmp_path / "cairn"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".ruff_cache"),
    )
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(copy / ".venv")], check=True)
    site = subprocess.run(
        [str(copy / ".venv" / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "cairn-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return copy


def app_sh(checkout: Path, pip_log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "app.sh"), *args],
        cwd=checkout.parent,
        env=app_env(PIP_LOG=str(pip_log), CAIRN_CONFIG_DIR=str(checkout.parent / "config")),
        capture_output=True,
        text=True,
        timeout=300,
    )


def pip_runs(pip_log: Path) -> int:
    """How many times pip installed Cairn (pip appends its log of every run to the file; ``-e .`` always installs)."""
    if not pip_log.exists():
        return 0
    return len(re.findall(r"^\S+ Successfully installed cairn-", pip_log.read_text(encoding="utf-8"), re.MULTILINE))


@pytest.mark.slow
def test_app_sh_runs_pip_only_when_the_dependencies_changed(checkout: Path, tmp_path: Path) -> None:
    pip_log = tmp_path / "pip.log"
    first = app_sh(checkout, pip_log, "--version")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip() == "Cairn 0.1.0"
    assert pip_runs(pip_log) == 1  # a new .venv: Cairn is installed

    again = app_sh(checkout, pip_log, "--version")
    assert again.returncode == 0, again.stderr[-3000:]
    assert pip_runs(pip_log) == 1, "pip ran again with nothing changed"

    # The window, with no desktop session: no pip, no apt-get, the plain message.
    window = app_sh(checkout, pip_log)
    assert window.returncode != 0
    assert "Cairn needs a desktop session" in window.stderr, window.stderr[-3000:]
    assert "apt-get" not in window.stderr
    assert pip_runs(pip_log) == 1

    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text(encoding="utf-8") + "\n# a dependency changed\n", encoding="utf-8")
    changed = app_sh(checkout, pip_log, "--version")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert pip_runs(pip_log) == 2


# --- losing the display -----------------------------------------------------------------------------------------


class App:
    """``python -m tests.support.typing_user``: main.py with a user typing, its JSON lines and its log as they come
    (both
    read all along: a full pipe would block the app)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.log = bytearray()
        loop = asyncio.get_running_loop()
        self.readers = [loop.create_task(self._read()), loop.create_task(self._read_log())]

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(json.loads(line))

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self.log.extend(chunk)

    def errors(self) -> str:
        return self.log.decode(errors="replace")

    def said(self, key: str) -> list[Any]:
        return [line[key] for line in self.lines if key in line]


@pytest.mark.parametrize("loss", ["the X server dies", "the session hangs up"])
async def test_losing_the_display_stores_the_reply_closes_storage_and_exits(tmp_path: Path, loss: str) -> None:
    data = tmp_path / "data"
    with ModelServer() as model, xvfb() as (display, x_server):
        model.pause(after_tokens=2)  # the reply is streaming when the display goes
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.typing_user",
            TEXT,
            "-v",
            cwd=str(ROOT),
            env=app_env(
                DISPLAY=display,
                QT_QPA_PLATFORM="xcb",
                CAIRN_CONFIG_DIR=str(tmp_path / "config"),
                CAIRN_DATA_DIR=str(data),
                MODEL_BASE_URL=model.base_url,
                MODEL_NAME="test-model",
                PYTHONPATH=str(ROOT),
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        app = App(process)
        try:
            with contextlib.suppress(AssertionError):  # said below, with what the app said
                await eventually(
                    lambda: (app.said("reply")[-1:] == [SHOWN] and model.paused_streams == 1)
                    or process.returncode is not None,
                    START_TIMEOUT,
                    "two tokens of the reply shown, the rest held",
                )
            assert app.said("reply")[-1:] == [SHOWN], (app.lines, app.errors()[-3000:])
            assert process.returncode is None and model.paused_streams == 1, (app.lines, app.errors()[-3000:])

            if loss == "the X server dies":
                x_server.kill()
            else:
                process.send_signal(signal.SIGHUP)  # a logout: the terminal Cairn was started from is gone
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXIT_BOUND):
                    await process.wait()
            took = time.monotonic() - started
        finally:
            if process.returncode is None:
                process.kill()
            await asyncio.gather(*app.readers)
            await process.wait()
            model.resume()
        errors = app.errors()
        assert took < EXIT_BOUND, f"still running {EXIT_BOUND} s after the display was lost\n{errors[-3000:]}"
        if loss == "the X server dies":
            assert process.returncode != 0  # the app did not end because the user asked
        assert "shut down cleanly" in errors, errors[-3000:]
        thread = app.said("sent")[0]

    # Storage was closed: SQLite removed its write-ahead log, and the file is whole.
    assert not (data / "cairn.sqlite-wal").exists()
    with contextlib.closing(sqlite3.connect(data / "cairn.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # The next start finds the message and the part of the reply that was shown, kept as stopped.
    manager = StorageManager(data_dir=data)
    await manager.start()
    try:
        service = ConversationService(Storage(manager, TieredSaver(manager)), Endpoint(model.base_url, "test-model"))
        messages = (await service.load(thread)).messages
        assert [(m.role, m.text) for m in messages] == [("user", TEXT), ("assistant", SHOWN)]
        assert messages[-1].stopped
    finally:
        await manager.close()
