"""Start and stop the Cairn window: an explicit, ordered sequence with a log line per step.

1. settings (non-strict: problems are shown, never fatal)   2. secrets (the OS keyring, or memory)
3. the window, with the conversation list read straight from the SQLite file (``storage.index``), painted
4. storage (its savers and psycopg take about a second to import, on a worker thread; SQLite opens at once,
   Postgres connects in the background), which refreshes the list and the badge, and asks for the Postgres password
   if it needs one no keyring has (``gui.password_dialog``)
5. the chat engine (LangGraph and langchain-openai take ~2 s to import, so they are imported on a worker thread
   while the window is already usable), then the conversation service.

Shutdown hangs off one signal, ``QCoreApplication.aboutToQuit``: the window's state is saved and every streaming reply
is stopped (its partial text is kept); once the Qt loop has returned, ``CairnApp.shutdown`` waits for those replies
to be stored and closes storage. Before that, every quit the user asks for (the window's close button, Ctrl+Q, the
app's Quit: Qt asks the window to close first) stops at the window while conversations live only in memory, which
asks first (``MainWindow.closeEvent``); a TERM, INT or HUP signal quits without asking (``CairnApp.quit_now``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import signal
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QCoreApplication, QEvent, QObject, QSettings, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from gui import tuning
from gui.appearance import apply_appearance
from storage.loop import new_qt_loop
from storage.secrets import SecretStore, password_key, split_password, url_user
from storage.settings import APP_NAME, Settings, load_settings

if TYPE_CHECKING:
    from chat.endpoints import Endpoint
    from chat.service import ConversationService
    from gui.main_window import MainWindow
    from gui.password_dialog import PostgresPasswordDialog
    from storage.factory import Storage
    from storage.status import StorageStatus

log = logging.getLogger("cairn.app")

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
STATE_FILE_NAME = "window.ini"
FIRST_PAINT_TIMEOUT = 1.0
FIRST_ROWS = 100  # conversations listed before the first paint: more than a screen holds
SHUTDOWN_TIMEOUT = 10.0


class CairnApp(QObject):
    """Owns what lives as long as the app: settings, secrets, storage, the conversation service and the window."""

    def __init__(
        self,
        qt_app: QCoreApplication,
        *,
        settings: Settings | None = None,
        secrets: SecretStore | None = None,
        model_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.qt_app = qt_app
        self.settings = settings
        self.secrets = secrets
        self.model_timeout = model_timeout
        self.storage: Storage | None = None
        self.service: ConversationService | None = None
        self.window: MainWindow | None = None
        self.ready = asyncio.Event()
        self._warm_up: asyncio.Future[None] | None = None
        self.password_dialog: PostgresPasswordDialog | None = None
        self._asked_password: Storage | None = None  # the storage the password was last asked for: once per stack
        self._storage_lock = asyncio.Lock()  # one comparison-and-reopen at a time
        self.timings: dict[str, float] = {}
        self._started = time.perf_counter()
        self._quitting = False
        self._closed = False
        qt_app.aboutToQuit.connect(self.about_to_quit)

    # --- start ----------------------------------------------------------------------------------------------
    def _step(self, number: int, name: str) -> None:
        elapsed = (time.perf_counter() - self._started) * 1000
        self.timings[name] = elapsed
        log.info("startup %d/5: %s (%.0f ms)", number, name, elapsed)

    async def start(self) -> MainWindow:
        self._step(1, "settings")
        settings = self.settings if self.settings is not None else load_settings(strict=False)
        self.settings = settings
        for problem in settings.problems:
            log.warning("settings: %s", problem)

        self._step(2, "secrets")
        secrets = self.secrets if self.secrets is not None else SecretStore()
        self.secrets = secrets

        self._step(3, "window")
        from gui.main_window import MainWindow
        from storage.index import read_index

        state = QSettings(str(settings.config_dir / STATE_FILE_NAME), QSettings.Format.IniFormat)
        apply_appearance(self.qt_app, settings.theme, settings.font_size)
        window = MainWindow(settings, secrets, state)
        self.window = window
        window.settingsApplied.connect(self._on_settings_applied)
        last_thread = window.restore_state()
        # The list straight from the file: the storage stack takes about a second to import, the window not.
        # The first screenful of it before the first paint, the rest right after (1,000 rows took 30 ms of it).
        # (The conversation open at quit may be further down: the list selects it, and scrolls to it, once whole.)
        listed = await read_index(settings.data_dir)
        window.show_index(listed[:FIRST_ROWS])
        if last_thread and any(c.thread_id == last_thread for c in listed):
            window.open_conversation(last_thread)  # its messages appear once the chat engine is loaded
        else:
            window.new_chat()
        window.show()
        await _first_paint(window)
        if len(listed) > FIRST_ROWS:
            window.show_index(listed)
        self.timings["first paint"] = (time.perf_counter() - self._started) * 1000
        log.info("window painted %.0f ms after start", self.timings["first paint"])
        # The keyring (70 ms), the storage stack (0.4 s) and the chat engine (0.5 s) are imported from now on, one
        # after the other on a worker thread: the window answers meanwhile, and makes its scene, opens storage and
        # lists the conversations while they load.
        imports = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-imports")
        keyring_found = asyncio.wrap_future(imports.submit(secrets.find_keyring))
        storage_imported = asyncio.wrap_future(imports.submit(importlib.import_module, "storage.factory"))
        engine_imported = asyncio.wrap_future(imports.submit(importlib.import_module, "chat.service"))
        imports.shutdown(wait=False)
        window.view.load_scene()  # Qt Quick's import, the QML load and its first frame: after the window shows
        window.show_problems(list(settings.problems))
        await keyring_found
        if secrets.warning:
            window.show_status(secrets.warning, 15_000)

        self._step(4, "storage")
        await storage_imported
        from storage.factory import open_storage

        self.storage = await open_storage(settings, secrets)
        window.attach_storage(self.storage)
        self._watch_storage(self.storage)
        await window.refresh_list()

        self._step(5, "chat engine")
        await engine_imported
        from chat.service import ConversationService

        self.service = ConversationService(self.storage, self.endpoint())
        window.attach_service(self.service)
        self.timings["ready"] = (time.perf_counter() - self._started) * 1000
        log.info("ready %.0f ms after start", self.timings["ready"])
        self.ready.set()
        # The model client is not needed to list, open or send (the model call runs on the model thread, which would
        # import it there): it loads after "ready", not before; so do the code highlighters a first open would build.
        self._warm_up = asyncio.ensure_future(asyncio.to_thread(_warm_up))
        self._warm_up.add_done_callback(_report_warm_up)
        if not settings.model_name:
            window.tasks.spawn(self._pick_first_model(), "Listing the server's models")
        return window

    def endpoint(self) -> Endpoint:
        from chat.endpoints import Endpoint, api_key_name

        settings = self.settings
        assert settings is not None and self.secrets is not None
        base_url = settings.model_base_url
        endpoint = Endpoint(
            base_url=base_url,
            model=settings.model_name,
            api_key=self.secrets.get(api_key_name(base_url)),
            system_prompt=settings.system_prompt,
            first_token_timeout=settings.model_first_token_timeout,
            token_timeout=settings.model_token_timeout,
        )
        if self.model_timeout is not None:
            endpoint = replace(endpoint, first_token_timeout=self.model_timeout, token_timeout=self.model_timeout)
        return endpoint

    async def _pick_first_model(self) -> None:
        """No model is configured: use the server's first (``ConversationService.pick_first_model``, which each send
        asks again while none is picked), and show it."""
        from chat.endpoints import ModelListError

        if self.service is None:
            return
        try:
            await self.service.pick_first_model()
        except (ModelListError, LookupError) as exc:
            log.info("no model chosen and the server lists none: %s", exc)
            return
        if self.window is not None:
            self.window.set_settings(self.window.settings)

    def _endpoint_keeping_model(self) -> Endpoint:
        """The endpoint of the settings; with no model set there, the one picked from the same server so far
        (saving any setting must not lose it: a send would fail until the server's models are listed again)."""
        endpoint = self.endpoint()
        current = self.service.endpoint if self.service is not None else None
        if not endpoint.model and current is not None and current.base_url == endpoint.base_url and current.model:
            endpoint = replace(endpoint, model=current.model)
        return endpoint

    # --- settings applied without a restart -----------------------------------------------------------------
    def _on_settings_applied(self, settings: Settings) -> None:
        assert self.window is not None
        self.window.tasks.spawn(self.apply_settings(settings), "Applying the settings")

    async def apply_settings(self, settings: Settings) -> None:
        self.settings = settings
        assert self.window is not None and self.secrets is not None
        if self.service is not None:
            self.service.set_endpoint(self._endpoint_keeping_model())
            if not self.service.endpoint.model:
                await self._pick_first_model()
        apply_appearance(self.qt_app, settings.theme, settings.font_size)
        self.window.set_settings(settings)
        await self.apply_storage_settings()

    async def apply_storage_settings(self, done: str = "Storage settings applied.") -> bool:
        """Reopen storage when the settings and secrets now give another storage than the running one; True if
        it was reopened. Compared with what the running storage was opened with, password included: the settings
        dialog and the password dialog store a new password before this runs, so comparing old settings with new
        ones (each resolving the password from the keyring now) would find no change."""
        await self.ready.wait()  # applied in the first seconds: the storage being opened is the one to replace
        async with self._storage_lock:
            settings, storage = self.settings, self.storage
            assert settings is not None and self.secrets is not None and storage is not None
            from storage.factory import storage_plan

            if storage.plan == storage_plan(settings, self.secrets):
                return False
            await self.reopen_storage(settings, done)
            return True

    async def reopen_storage(self, settings: Settings, done: str = "Storage settings applied.") -> None:
        """Storage settings changed: stop replies, open the new storage, swap, then close the old one."""
        from chat.service import ConversationService
        from storage.factory import open_storage

        assert self.window is not None and self.secrets is not None
        log.info("storage settings changed: reopening storage")
        window = self.window
        await window.detach_service()
        old = self.storage
        try:
            storage = await open_storage(settings, self.secrets)
        except Exception as exc:
            log.exception("reopening storage failed")
            window.show_status(f"The new storage settings could not be used ({exc}); keeping the current ones.")
            if self.service is not None:
                window.attach_service(self.service)
            return
        if old is not None:
            # What only the old storage's memory holds (nothing durable worked there) goes into the new one: a data
            # folder chosen while nothing was saved receives everything written meanwhile.
            moved = await storage.manager.take_over(old.manager)
            if moved:
                done = f"{done} {len(moved)} conversation(s) written while nothing was saved are saved there now."
        self.storage = storage
        self.service = ConversationService(storage, self._endpoint_keeping_model())
        window.attach_storage(storage)
        self._watch_storage(storage)
        window.attach_service(self.service)
        window.show_status(done)
        if old is not None:
            await old.close()

    # --- the Postgres password, asked when no keyring has it ------------------------------------------------
    def _watch_storage(self, storage: Storage) -> None:
        """Follow the status of ``storage``, just attached to the window, through the window's bridge (which ends
        with it) for the password it may need."""
        assert self.window is not None and self.window.bridge is not None
        self._close_password_dialog()  # it asked for the storage being replaced
        self.window.bridge.statusChanged.connect(lambda status: self._check_password(storage, status))
        self._check_password(storage, storage.manager.status())

    def _check_password(self, storage: Storage, status: StorageStatus) -> None:
        """Ask for the password when the URL names a user and none is known with no keyring to keep one (also while
        the server is unreachable: the answer is ready when it comes back), or when the server refused the
        password; once per storage stack (a Cancel is not asked again every minute), and put away once Postgres
        answers without it."""
        if storage is not self.storage or self.window is None or self.secrets is None or self.settings is None:
            return
        postgres = status.tiers["postgres"]
        if postgres.state == "connected":
            self._close_password_dialog()
            return
        target = storage.plan.postgres if storage.plan is not None else None
        if target is None or self._asked_password is storage or self.password_dialog is not None:
            return
        if split_password(self.settings.postgres_url)[1] is not None:
            return  # the URL carries its own password, which wins over any answer: asking would change nothing
        refused = postgres.state == "down" and postgres.detail.get("refused") == "password"
        # Once the first attempt is over: a server that trusts the user needs none, and must not flash a dialog up.
        missing = (
            postgres.state == "down"
            and target.password is None
            and not self.secrets.persistent
            and bool(url_user(target.url))
        )
        if refused or missing:
            self.ask_password(storage, refused=refused)

    def ask_password(self, storage: Storage, *, refused: bool) -> PostgresPasswordDialog:
        from gui.password_dialog import PostgresPasswordDialog

        assert self.window is not None and self.secrets is not None
        assert storage.plan is not None and storage.plan.postgres is not None
        url = storage.plan.postgres.url
        self._asked_password = storage
        dialog = PostgresPasswordDialog(url, persistent=self.secrets.persistent, refused=refused, parent=self.window)
        dialog.passwordEntered.connect(lambda password: self._use_password(url, password))
        dialog.finished.connect(lambda _result: self._forget_password_dialog(dialog))
        self.password_dialog = dialog
        log.info("asking for the Postgres password (%s)", "refused" if refused else "none known")
        dialog.open()
        return dialog

    def _use_password(self, url: str, password: str) -> None:
        assert self.window is not None and self.secrets is not None
        self.secrets.set(password_key(url), password)  # the keyring, or this session's memory
        self.window.show_status("Connecting to Postgres…")
        self.window.tasks.spawn(
            self.apply_storage_settings("Connecting to Postgres with the password given."), "Connecting to Postgres"
        )

    def _close_password_dialog(self) -> None:
        if self.password_dialog is not None:
            self.password_dialog.reject()

    def _forget_password_dialog(self, dialog: QWidget) -> None:
        if self.password_dialog is dialog:
            self.password_dialog = None
        dialog.deleteLater()

    # --- stop -----------------------------------------------------------------------------------------------
    def about_to_quit(self) -> None:
        """The one shutdown signal: save the window's state and stop every reply (their text is kept)."""
        if self._quitting:
            return
        self._quitting = True
        log.info("quitting: saving the window state and stopping replies")
        if self.window is not None:
            self.window.allow_close()  # quitting for good: a close from now on must not ask again
            self.window.save_state()
            self.window.stop_all()

    def quit_now(self) -> None:
        """Quit without asking: on a TERM, INT or HUP signal, or the scripted ``--quit-after`` (nobody may be there to
        answer)."""
        if self.window is not None:
            lost = len(self.window.unsaved_threads())
            if lost:
                log.warning("quitting without asking: %d conversation(s) only in memory are lost", lost)
            self.window.allow_close()
        self.qt_app.quit()

    async def shutdown(self) -> None:
        """Wait for stopped replies to be stored, then close storage. Safe to call more than once."""
        if self._closed:
            return
        self.about_to_quit()
        self._closed = True
        with contextlib.suppress(RuntimeError, TypeError):
            self.qt_app.aboutToQuit.disconnect(self.about_to_quit)
        window = self.window
        if window is not None:
            await window.stop_all_replies(SHUTDOWN_TIMEOUT)
            await window.tasks.drain(SHUTDOWN_TIMEOUT / 2)
            window.tasks.close()  # nothing starts after this: storage closes below
            if window.bridge is not None:
                window.bridge.close()
        if self.storage is not None:
            await self.storage.close()
        log.info("shut down cleanly")


def _report_warm_up(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("loading the model client failed", exc_info=exc)  # a bug: the first send will fail the same way


def _warm_up() -> None:
    from gui.markdown import warm_up_highlighting  # (pygments and markdown-it: not before the first paint)

    _load_model_client()
    warm_up_highlighting()


def _load_model_client() -> None:
    """Import langchain-openai and build one throwaway client (about 0.5 s): the OpenAI client imports more on first
    use, which would otherwise delay the first reply."""
    from chat.endpoints import Endpoint, chat_model

    chat_model(Endpoint("http://127.0.0.1:9/v1", "warm-up"))


class _PaintWatch(QObject):
    def __init__(self, window: QWidget, future: asyncio.Future[None]) -> None:
        super().__init__()
        self.window = window
        self.future = future

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            event.type() == QEvent.Type.Paint
            and isinstance(watched, QWidget)
            and watched.window() is self.window
            and not self.future.done()
        ):
            self.future.set_result(None)
        return False


async def _first_paint(window: QWidget) -> None:
    """Return once the window has painted (or after a second: never hold the start on it)."""
    app = QApplication.instance()
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    watch = _PaintWatch(window, future)
    assert app is not None
    app.installEventFilter(watch)
    try:
        async with asyncio.timeout(FIRST_PAINT_TIMEOUT):
            await future
    except TimeoutError:
        log.info("no paint event within %.1f s (a hidden or offscreen window?)", FIRST_PAINT_TIMEOUT)
    finally:
        app.removeEventFilter(watch)


# --- the process ----------------------------------------------------------------------------------------------------


def configure(app: QApplication) -> None:
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setDesktopFileName("cairn")
    icon = RESOURCES / "cairn.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    style = RESOURCES / "style.qss"
    if style.is_file():
        app.setStyleSheet(style.read_text(encoding="utf-8"))


def run_to_the_end(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` to its end on the Qt loop, even if Qt stops the loop meanwhile (its exception is raised).

    Once the X11 connection broke (the X server died, a logout), Qt's xcb plugin calls ``QCoreApplication.exit(1)``
    on every pass of the event loop, so ``run_until_complete`` gave up before storage was closed; storage's SQLite
    thread then kept the interpreter from exiting, forever. Each pass still runs what is ready, so entering the loop
    again until the coroutine is done finishes it.
    """
    task = loop.create_task(coroutine)
    task.add_done_callback(lambda _task: loop.stop())
    while not task.done():
        loop.run_forever()
    task.result()


def run(argv: Sequence[str], *, quit_after: float | None = None) -> int:
    """Open the window and run until it is closed; the process's exit code."""
    tuning.tune_interpreter()  # before Qt's threads
    app = QApplication.instance() or QApplication(list(argv))
    assert isinstance(app, QApplication)
    configure(app)
    loop = new_qt_loop(app)
    asyncio.set_event_loop(loop)
    cairn = CairnApp(app)
    failed: list[BaseException] = []

    def started(task: asyncio.Task[MainWindow]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.critical("Cairn could not start", exc_info=(type(exc), exc, exc.__traceback__))
            failed.append(exc)
            QMessageBox.critical(None, "Cairn could not start", f"{type(exc).__name__}: {exc}")
            app.exit(1)
        else:
            tuning.freeze_startup_objects()
            tuning.collect_when_quiet(task.result())
            if quit_after is not None:
                QTimer.singleShot(round(quit_after * 1000), cairn.quit_now)  # scripted: nobody to ask

    # Ctrl+C, a TERM signal or a HUP (the terminal Cairn was started from closed, a logout) quit cleanly; the timer
    # lets Python run its signal handlers while Qt waits.
    for number in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if number is not None:
            signal.signal(number, lambda *_args: cairn.quit_now())
    wake = QTimer(app)
    wake.start(250)
    wake.timeout.connect(lambda: None)

    start = loop.create_task(cairn.start())
    start.add_done_callback(started)
    code = loop.run_forever()
    if not start.done():
        start.cancel()
    if code and not failed:
        lost = len(cairn.window.unsaved_threads()) if cairn.window is not None else 0
        log.warning(
            "Qt ended the app (code %s; the display was lost?): storing what is left and closing storage%s",
            code,
            f"; {lost} conversation(s) only in memory are lost" if lost else "",
        )
    run_to_the_end(loop, cairn.shutdown())
    # The model thread's loop goes last: the replies are stored and nothing will ask a model any more. Only here, at
    # the end of the process: langchain-openai keeps its HTTP clients bound to that loop for the process's life.
    from chat.offload import model_thread

    if not model_thread().stop():
        log.warning("the model thread did not stop within its grace time")
    wake.stop()
    loop.close()
    return 1 if failed else int(code or 0)
