"""``cairn self-test``: prove that this installation works, without touching the user's data.

    python main.py self-test [--json] [--report FILE] [--offscreen] [--keep] [--require-keyring] [--keyring-roundtrip]

The same command runs in the frozen app (``Cairn.exe self-test``, ``Cairn.app/Contents/MacOS/Cairn self-test``,
``dist/Cairn/Cairn self-test``). It

1. makes a temporary folder with a data dir and a config dir (the user's settings, ``.env``, environment, data and
   keyring entries are never read or written; ``--data-dir`` points the data dir elsewhere, for diagnosis);
2. reports the OS keyring backend the app would use (and, with ``--keyring-roundtrip``, stores, reads and deletes a
   throwaway entry under the service ``cairn-selftest``);
3. starts a tiny OpenAI-compatible model server on 127.0.0.1 (a fixed answer: no real model is needed);
4. starts the app as ``python main.py`` does (settings, secrets, storage, the window, the chat engine); the window
   is offscreen when there is no display or ``--offscreen`` is given;
5. sends a message through the conversation service (the graph, the tiered saver, SQLite) and checks the reply and
   that the conversation shows in the window's list, and opened, as message cards (Qt Quick and its QML must load,
   which a bundle missing them fails);
6. shuts the app down, opens the storage again from disk and reads the conversation back;
7. prints a short report (``--json``: one JSON object; ``--report FILE``: the same text written to FILE too, for
   windowed apps on Windows that have no console) and exits 0, or 1 naming each failed check.

What counts as a failure: the window does not open; the SVG app icon does not render (a bundle without Qt's SVG or
ICO plugins); the active storage tier is ``memory`` (nothing would be saved); the reply does not arrive or is not
stored; the conversation read back after a restart differs from what was sent (or is missing); the self-test takes
longer than ``--timeout``. A missing OS keyring is reported, not a failure (headless Linux has none), unless
``--require-keyring`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gui.main_window import MainWindow

ROOT = Path(__file__).resolve().parent.parent
MODEL = "cairn-selftest"
USER_TEXT = "Cairn self-test ✓ — Grüße, 你好, 👩‍💻\nsecond line"
REPLY_PREFIX = "Self-test reply to: "
KEYRING_SERVICE = "cairn-selftest"
VERSION_FILE = "cairn_version.txt"
DEFAULT_TIMEOUT = 90.0


# --- the command line --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--report", type=Path, metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--offscreen", action="store_true", help="never show the window (QT_QPA_PLATFORM=offscreen)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="use DIR as the data dir instead of a fresh temporary one (the test conversation is deleted after)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is reported)")
    parser.add_argument("--require-keyring", action="store_true", help="fail when no OS keyring backend is available")
    parser.add_argument(
        "--keyring-roundtrip",
        action="store_true",
        help=f"store, read and delete a throwaway secret in the OS keyring (service {KEYRING_SERVICE!r})",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="give up after this many seconds (%(default)s)"
    )


# --- the report --------------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    version: str
    frozen: bool
    executable: str
    platform: str
    python: str
    checks: list[Check] = field(default_factory=list)
    qt: dict[str, str] = field(default_factory=dict)
    keyring: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    conversation: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    temp_dir: str = ""
    kept: bool = False
    traceback: str = ""

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {"ok": self.ok, "failures": self.failures, **data}

    def to_text(self) -> str:
        total = self.timings_ms.get("total", 0) / 1000
        lines = [f"Cairn self-test: {'OK' if self.ok else 'FAILED'} ({total:.1f} s)"]
        frozen = "frozen app" if self.frozen else "from source"
        lines.append(f"  version   {self.version} ({frozen}), Python {self.python}, {self.platform}")
        if self.qt:
            qt = self.qt
            lines.append(f"  qt        PySide6 {qt.get('pyside6')}, Qt {qt.get('qt')}, {qt.get('platform')}")
        if self.keyring:
            kind = "persistent" if self.keyring.get("persistent") else "session only"
            lines.append(f"  keyring   {self.keyring.get('backend')} ({kind})")
        if self.storage:
            lines.append(f"  storage   active tier {self.storage.get('active_tier')} in {self.storage.get('data_dir')}")
        for check in self.checks:
            mark = "ok  " if check.ok else "FAIL"
            lines.append(f"  [{mark}] {check.name}" + (f": {check.detail}" if check.detail else ""))
        if self.kept:
            lines.append(f"  kept      {self.temp_dir}")
        return "\n".join(lines)


def app_version() -> str:
    """The version being tested: the frozen app's stamped version, else pyproject.toml's."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle is not None:
        with contextlib.suppress(OSError):
            return (Path(bundle) / VERSION_FILE).read_text(encoding="utf-8").strip()
    with contextlib.suppress(OSError, ValueError, KeyError):
        import tomllib

        return str(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version("cairn")
    return "unknown"


# --- a tiny OpenAI-compatible model server -----------------------------------------------------------------------


def expected_reply(text: str) -> str:
    return REPLY_PREFIX + text


class Responder:
    """Answers ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed or not) on 127.0.0.1, on this loop."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.requests: list[str] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._handlers):  # Python 3.11's Server.close() leaves open connections alone
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection (``Connection: close``): nothing is left open when the test ends."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, path, _version = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length") or 0))
            self.requests.append(f"{method} {path}")
            status, content_type, payload = self._answer(method, path.split("?")[0], body)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
                "Cache-Control: no-cache\r\nConnection: close\r\n\r\n".encode("latin-1")
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    def _answer(self, method: str, path: str, body: bytes) -> tuple[str, str, bytes]:
        if method == "GET" and path.endswith("/models"):
            models = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "cairn"}]}
            return "200 OK", "application/json", json.dumps(models).encode()
        if method != "POST" or not path.endswith("/chat/completions"):
            error = {"error": {"message": f"no route {method} {path}", "type": "invalid_request_error"}}
            return "404 Not Found", "application/json", json.dumps(error).encode()
        request = json.loads(body or b"{}")
        user = [m for m in request.get("messages", []) if m.get("role") == "user"]
        content = user[-1].get("content", "") if user else ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        reply = expected_reply(str(content))
        created = int(time.time())
        base = {"id": "chatcmpl-selftest", "created": created, "model": request.get("model", MODEL)}
        if not request.get("stream"):
            message = {"role": "assistant", "content": reply}
            completion = {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            return "200 OK", "application/json", json.dumps(completion).encode()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {**base, "object": "chat.completion.chunk", "choices": [choice]}

        pieces = [reply[i : i + 8] for i in range(0, len(reply), 8)]  # several tokens: the stream is exercised
        events: list[Any] = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in pieces]
        events.append(chunk({}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 1, "completion_tokens": len(pieces), "total_tokens": 1 + len(pieces)}
            events.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        events.append("[DONE]")
        stream = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
        return "200 OK", "text/event-stream; charset=utf-8", stream.encode()


# --- the run -----------------------------------------------------------------------------------------------------


def _choose_qt_platform(offscreen: bool) -> None:
    """Offscreen when asked, or on Linux/BSD without a display; otherwise Qt's default (a real window)."""
    if offscreen:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        return
    if sys.platform in ("win32", "darwin") or os.environ.get("QT_QPA_PLATFORM"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


def _bypass_proxies_for_loopback() -> None:
    """httpx honours HTTP(S)_PROXY: the loopback model server must not be sent to a proxy."""
    for name in ("NO_PROXY", "no_proxy"):
        current = [p for p in os.environ.get(name, "").split(",") if p.strip()]
        if "127.0.0.1" not in current:
            os.environ[name] = ",".join([*current, "127.0.0.1"])


def _session_secrets() -> Any:
    """A secret store that never touches the user's keyring (the app under test gets this one)."""
    import keyring.backend
    import keyring.errors

    from storage.secrets import SecretStore

    class SessionKeyring(keyring.backend.KeyringBackend):
        priority = 0

        def __init__(self) -> None:
            super().__init__()
            self.values: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.values.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.values[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            if self.values.pop((service, username), None) is None:
                raise keyring.errors.PasswordDeleteError(username)

    return SecretStore(backend=SessionKeyring())


KEYRING_BACKENDS = ("SecretService", "libsecret", "kwallet", "macOS", "Windows")


def _keyring_backends() -> dict[str, Any]:
    """Which backend modules import and which keyring entry points exist: in a frozen app, what was bundled."""
    import importlib
    from importlib.metadata import entry_points

    modules = {}
    for name in KEYRING_BACKENDS:
        try:
            importlib.import_module(f"keyring.backends.{name}")
        except Exception as exc:
            modules[name] = f"{type(exc).__name__}: {exc}"
        else:
            modules[name] = "ok"
    info: dict[str, Any] = {"backend_modules": modules}
    try:
        info["entry_points"] = sorted(ep.name for ep in entry_points(group="keyring.backends"))
    except Exception as exc:
        info["entry_points"] = f"{type(exc).__name__}: {exc}"
    if sys.platform == "win32":
        try:
            importlib.import_module("win32ctypes.pywin32.win32cred")
        except Exception as exc:
            info["win32ctypes"] = f"{type(exc).__name__}: {exc}"
        else:
            info["win32ctypes"] = "ok"
    return info


def _check_keyring(report: Report, require: bool, roundtrip: bool) -> None:
    from storage.secrets import SecretStore

    store = SecretStore(KEYRING_SERVICE)
    report.keyring = {"backend": store.backend_name, "persistent": store.persistent, "warning": store.warning}
    with contextlib.suppress(Exception):
        import keyring

        active = keyring.get_keyring()
        report.keyring["active"] = f"{type(active).__module__}.{type(active).__qualname__}"
    report.keyring.update(_keyring_backends())
    if require:
        report.check(
            "keyring",
            store.persistent,
            store.backend_name if store.persistent else (store.warning or "no OS keyring backend"),
        )
    else:
        note = store.backend_name if store.persistent else f"none: {store.warning or 'no OS keyring backend'}"
        report.check("keyring", True, f"reported ({note})")
    if roundtrip:
        name = f"selftest-{os.getpid()}-{time.time_ns()}"
        value = "cairn self-test ✓"
        try:
            store.set(name, value)
            read = store.get(name)
            store.delete(name)
            gone = store.get(name) is None
        except Exception as exc:  # a backend that raises something unexpected is exactly what this checks
            report.keyring["roundtrip"] = f"failed: {type(exc).__name__}: {exc}"
            report.check("keyring round trip", False, report.keyring["roundtrip"])
            return
        ok = store.persistent and read == value and gone
        detail = "stored, read back and deleted" if ok else (store.warning or f"read back {read!r}, deleted: {gone}")
        report.keyring["roundtrip"] = "ok" if ok else f"failed: {detail}"
        report.check("keyring round trip", ok, detail)


def _check_icon(report: Report, qt_app: Any) -> None:
    """The app icon (an SVG) renders: the Qt image-format and icon-engine plugins for SVG are there."""
    from PySide6.QtGui import QImageReader

    formats = sorted(bytes(f.data()).decode() for f in QImageReader.supportedImageFormats())
    report.qt["image_formats"] = ",".join(formats)
    missing = [f for f in ("svg", "ico", "png") if f not in formats]
    icon = qt_app.windowIcon()
    rendered = not icon.isNull() and not icon.pixmap(64, 64).isNull()
    if missing or not rendered:
        why = f"no Qt image format for {', '.join(missing)}" if missing else "the window icon did not render"
        report.check("icon", False, why)
    else:
        report.check("icon", True, "the SVG app icon renders; image formats include svg, ico, png")


def _messages(view: Any) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in view.messages]


async def _exercise(
    report: Report,
    qt_app: Any,
    data_dir: Path,
    config_dir: Path,
    work_dir: Path,
    step: list[str],
) -> None:
    """Start the app on throwaway settings, chat once, restart storage, read the conversation back."""
    from PySide6.QtGui import QGuiApplication

    from chat.endpoints import Endpoint
    from gui.app import CairnApp
    from storage.settings import load_settings

    started = time.perf_counter()

    def mark(name: str) -> None:
        report.timings_ms[name] = round((time.perf_counter() - started) * 1000, 1)

    step[0] = "starting the model server"
    responder = Responder()
    base_url = await responder.start()
    cairn: CairnApp | None = None
    try:
        step[0] = "reading settings"
        environ = {"CAIRN_DATA_DIR": str(data_dir), "MODEL_BASE_URL": base_url, "MODEL_NAME": MODEL}
        settings = load_settings(environ=environ, cwd=work_dir, config_dir=config_dir, strict=True)
        secrets = _session_secrets()

        step[0] = "starting the app"
        cairn = CairnApp(qt_app, settings=settings, secrets=secrets, model_timeout=30.0)
        window = await cairn.start()
        mark("app ready")
        report.timings_ms.update({f"app {k}": round(v, 1) for k, v in cairn.timings.items()})
        report.qt["platform"] = QGuiApplication.platformName()
        report.check("window", window.isVisible(), f"{window.windowTitle()!r} shown on {report.qt['platform']}")
        _check_icon(report, qt_app)

        assert cairn.storage is not None and cairn.service is not None
        status = cairn.storage.manager.status()
        report.storage = {
            "active_tier": status.active_tier,
            "reason": status.reason,
            "data_dir": str(data_dir),
            "tiers": {name: tier.state for name, tier in status.tiers.items()},
        }
        durable = status.active_tier in ("sqlite", "postgres")
        report.check(
            "storage",
            durable,
            f"active tier {status.active_tier}" + ("" if durable else f": nothing would be saved ({status.reason})"),
        )

        step[0] = "sending a message"
        from chat.events import ReplyDone, ReplyFailed

        service = cairn.service
        thread_id = service.new_thread_id()
        report.conversation = {"thread_id": thread_id}
        outcome: Any = None
        async for event in service.send(thread_id, USER_TEXT):
            if isinstance(event, ReplyDone | ReplyFailed):
                outcome = event
        mark("reply")
        wanted = expected_reply(USER_TEXT)
        if isinstance(outcome, ReplyDone):
            report.check("reply", outcome.text == wanted, f"{len(outcome.text)} characters streamed and stored")
        else:
            why = f"{outcome.kind}: {outcome.message}" if isinstance(outcome, ReplyFailed) else "no reply event"
            report.check("reply", False, why)

        step[0] = "listing the conversation in the window"
        await window.refresh_list()
        listed = thread_id in window.sidebar.thread_ids()
        report.check("list", listed, "the conversation is in the window's list" if listed else "not in the list")

        loaded = await service.load(thread_id)
        written = _messages(loaded)
        step[0] = "showing the conversation as cards"
        await _check_cards(report, window, thread_id, len(loaded.messages))

        conversation = await service.conversation(thread_id)
        report.conversation["title"] = conversation.title if conversation else None
        report.conversation["messages_written"] = len(written)

        step[0] = "shutting the app down"
        await cairn.shutdown()
        window.close()
        cairn = None
        mark("shut down")

        step[0] = "reading the conversation back from disk"
        from chat.service import ConversationService
        from storage.factory import open_storage

        storage = await open_storage(settings, secrets)
        try:
            reopened = ConversationService(storage, Endpoint(base_url, MODEL))
            read = _messages(await reopened.load(thread_id))
            stored = await reopened.conversation(thread_id)
            report.storage["active_tier_after_restart"] = storage.manager.status().active_tier
            if not data_dir.is_relative_to(work_dir):  # --data-dir: leave no test conversation in someone's list
                await reopened.delete(thread_id)
        finally:
            await storage.close()
        mark("read back")
        expected = [("user", USER_TEXT), ("assistant", wanted)]
        same = read == expected and written == expected
        report.conversation.update(
            {"messages_read": len(read), "round_trip": same, "title_after_restart": stored.title if stored else None}
        )
        if same:
            detail = f"{len(read)} messages and the title read back after a restart"
        elif not read:
            detail = "the conversation is gone after a restart"
        else:
            detail = f"read back {read!r}, expected {expected!r}"
        report.check("round trip", same and stored is not None and bool(stored.title), detail)
    finally:
        if cairn is not None:
            with contextlib.suppress(Exception):
                await cairn.shutdown()
            if cairn.window is not None:
                cairn.window.close()
        await responder.close()


async def _check_cards(report: Report, window: MainWindow, thread_id: str, wanted: int) -> None:
    """The window opens the conversation and shows its messages as cards: in a bundle, Qt Quick and the QML modules
    the scene imports must have come along (installer/cairn.spec; a scene that did not load at all stops the window
    from being made, which the "window" check reports)."""
    from PySide6.QtCore import QMetaObject
    from PySide6.QtQuick import QQuickItem

    loop = asyncio.get_running_loop()
    shown: asyncio.Future[str] = loop.create_future()

    def on_shown(thread: str) -> None:
        if thread == thread_id and not shown.done():
            shown.set_result(thread)

    window.conversationShown.connect(on_shown)
    try:
        window.open_conversation(thread_id)
        await shown
    finally:
        window.conversationShown.disconnect(on_shown)
    view = window.view
    rows = view.model.rowCount()
    items = view.list_item()
    QMetaObject.invokeMethod(items, "forceLayout")  # the delegates now, not at the next frame
    content = items.property("contentItem")
    drawn = sum(1 for item in content.childItems() if isinstance(item, QQuickItem) and item.objectName() == "message")
    report.check(
        "cards view",
        rows == wanted and drawn == wanted,
        f"the Qt Quick scene shows {drawn} cards for the {wanted} messages ({rows} in its model)",
    )
    unreadable = unreadable_icons()
    report.check(
        "cards icons",
        not unreadable,
        "every icon the scene uses is there and readable" + (f"; not: {', '.join(unreadable)}" if unreadable else ""),
    )


def unreadable_icons() -> list[str]:
    """The icons Conversation.qml names that are missing or that Qt cannot read (the SVG image plugin)."""
    from PySide6.QtGui import QImage

    from gui.conversation.view import ICONS, QML

    names = sorted(set(re.findall(r'"icons/([\w.-]+)"', QML.read_text(encoding="utf-8"))))
    return [name for name in names if QImage(str(ICONS / name)).isNull()] if names else ["(none named)"]


def _run_qt(report: Report, args: argparse.Namespace, data_dir: Path, config_dir: Path, work_dir: Path) -> None:
    import PySide6
    from PySide6.QtCore import qVersion
    from PySide6.QtWidgets import QApplication

    from gui.app import configure
    from storage.loop import new_qt_loop

    report.qt = {"pyside6": PySide6.__version__, "qt": qVersion()}
    # Qt's compiled-QML cache would go to the user's cache folder (the window's scene is QML): the self-test writes
    # nothing outside its own folder.
    os.environ["QML_DISABLE_DISK_CACHE"] = "1"
    app = QApplication.instance() or QApplication([sys.argv[0]])
    assert isinstance(app, QApplication)
    configure(app)
    app.setQuitOnLastWindowClosed(False)  # closing the window must not stop the loop: the read-back comes after
    loop = new_qt_loop(app)
    asyncio.set_event_loop(loop)
    step = ["starting"]

    async def bounded() -> None:
        try:
            async with asyncio.timeout(args.timeout):
                await _exercise(report, app, data_dir, config_dir, work_dir, step)
        except TimeoutError:
            report.check("time", False, f"gave up after {args.timeout:g} s while {step[0]}")

    try:
        loop.run_until_complete(bounded())
    except Exception as exc:
        report.check("run", False, f"{type(exc).__name__} while {step[0]}: {exc}")
        report.traceback = traceback.format_exc(limit=8)
    finally:
        app.processEvents()
        loop.close()
        asyncio.set_event_loop(None)


def run(args: argparse.Namespace) -> int:
    """The ``self-test`` command; the process's exit code."""
    started = time.perf_counter()
    report = Report(
        version=app_version(),
        frozen=bool(getattr(sys, "frozen", False)),
        executable=sys.executable,
        platform=platform.platform(),
        python=platform.python_version(),
    )
    work_dir = Path(tempfile.mkdtemp(prefix="cairn-selftest-"))
    report.temp_dir = str(work_dir)
    data_dir = args.data_dir if args.data_dir is not None else work_dir / "data"
    config_dir = work_dir / "config"
    try:
        _choose_qt_platform(args.offscreen)
        _bypass_proxies_for_loopback()
        _check_keyring(report, args.require_keyring, args.keyring_roundtrip)
        _run_qt(report, args, data_dir, config_dir, work_dir)
    except Exception as exc:
        report.check("run", False, f"{type(exc).__name__}: {exc}")
    finally:
        report.kept = bool(args.keep)
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    report.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 1)
    text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) if args.json else report.to_text()
    if sys.stdout is not None:  # a windowed app on Windows has no console
        with contextlib.suppress(AttributeError, ValueError):
            # A cp1252 console must not lose the report (a redirected stdout may be another kind of stream).
            sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            print(text, flush=True)
    if args.report is not None:
        try:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            if sys.stderr is not None:
                print(f"self-test: cannot write the report to {args.report}: {exc}", file=sys.stderr)
            return 1
    return 0 if report.ok else 1
