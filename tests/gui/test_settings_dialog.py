"""gui/settings_dialog.py and storage/connection_test.py: saving, secrets, the connection test, the model list."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring.backends.fail
import psycopg
import pytest
from keyring.backend import KeyringBackend
from PySide6.QtCore import QObject, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QDialog

from chat.endpoints import api_key_name
from gui.app import CairnApp
from gui.password_dialog import PostgresPasswordDialog
from gui.settings_dialog import SettingsDialog, join_postgres_url, split_postgres_url
from storage import connection_test
from storage.factory import Storage
from storage.secrets import SecretStore, password_key, split_password
from storage.settings import SETTINGS, SETTINGS_FILE_NAME, Settings, load_settings
from tests.support.app import (
    WAIT,
    Cairn,
    cairn_factory,
    send_and_wait,
    until,
    window_of,
)
from tests.support.keyring_backend import MemoryKeyring
from tests.support.model_server import DEFAULT_MODELS, ModelServer
from tests.support.pgcluster import PW_PASSWORD, PW_USER
from tests.support.qt import LoopTicker, wait_signal
from tests.support.waiting import wait_for_status

SERVICE = "cairn"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config dir, and no settings from this process's environment or a .env."""
    for spec in SETTINGS:
        monkeypatch.delenv(spec.key, raising=False)
    monkeypatch.delenv("CAIRN_CONFIG_DIR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "config"


@pytest.fixture
def settings(config_dir: Path, tmp_path: Path) -> Settings:
    (config_dir).mkdir()
    (config_dir / SETTINGS_FILE_NAME).write_text(json.dumps({"CAIRN_DATA_DIR": str(tmp_path / "data")}))
    return load_settings(config_dir=config_dir)


@pytest.fixture
def secrets(memory_keyring: MemoryKeyring) -> SecretStore:
    return SecretStore()


@pytest.fixture
def dialog(settings: Settings, secrets: SecretStore, qtbot: Any) -> SettingsDialog:
    dialog = SettingsDialog(settings, secrets)
    qtbot.addWidget(dialog)
    return dialog


def tab_index(dialog: SettingsDialog, title: str) -> int:
    return next(i for i in range(dialog.tabs.count()) if dialog.tabs.tabText(i) == title)


def files_text(directory: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------- saving


def test_ok_saves_url_and_keeps_the_password_only_in_the_keyring(
    dialog: SettingsDialog, config_dir: Path, memory_keyring: MemoryKeyring, qtbot: Any
) -> None:
    applied: list[Settings] = []
    dialog.settingsApplied.connect(applied.append)
    dialog.postgres_url.setText("postgresql://db.example:5433/cairn")
    dialog.postgres_user.setText("alice")
    dialog.postgres_password.setText("s3cret-Pw!")
    dialog.sslmode.setCurrentText("require")
    dialog.pool_size.setValue(7)
    dialog.prefer_async.setChecked(False)

    qtbot.mouseClick(dialog.buttons.button(dialog.buttons.StandardButton.Ok), Qt.MouseButton.LeftButton)

    assert dialog.result() == QDialog.DialogCode.Accepted
    assert len(applied) == 1
    new = applied[0]
    assert new.postgres_url == "postgresql://alice@db.example:5433/cairn?sslmode=require"
    assert new.pool_size == 7
    assert new.prefer_async_postgres is False
    key = password_key(new.postgres_url)
    assert key == "postgres:alice@db.example:5433/cairn"
    assert memory_keyring.passwords == {(SERVICE, key): "s3cret-Pw!"}
    assert "s3cret-Pw!" not in files_text(config_dir)
    stored = json.loads((config_dir / SETTINGS_FILE_NAME).read_text())
    assert stored["POSTGRES_DATABASE_URL"] == new.postgres_url
    # Only what the user changed is written: untouched settings keep following their defaults.
    assert set(stored) == {
        "CAIRN_DATA_DIR",
        "POSTGRES_DATABASE_URL",
        "POSTGRES_POOL_SIZE",
        "PREFER_ASYNC_POSTGRES",
    }


def test_reopening_shows_the_saved_values_and_the_password_from_the_keyring(
    settings: Settings, secrets: SecretStore, config_dir: Path, qtbot: Any
) -> None:
    first = SettingsDialog(settings, secrets)
    qtbot.addWidget(first)
    first.postgres_url.setText("postgresql://bob:pw%40home@db.local/chat?sslmode=verify-full")
    first.postgres_url.editingFinished.emit()
    # A user, password and sslmode typed into the URL move to their own fields.
    assert first.postgres_url.text() == "postgresql://db.local/chat"
    assert first.postgres_user.text() == "bob"
    assert first.postgres_password.text() == "pw@home"
    assert first.sslmode.currentText() == "verify-full"
    saved = first.save()
    assert saved is not None

    second = SettingsDialog(saved, secrets)
    qtbot.addWidget(second)
    assert second.postgres_url.text() == "postgresql://db.local/chat"
    assert second.postgres_user.text() == "bob"
    assert second.postgres_password.text() == "pw@home"
    assert second.postgres_password.echoMode() == second.postgres_password.EchoMode.Password
    assert second.sslmode.currentText() == "verify-full"
    assert "pw@home" not in files_text(config_dir)


def test_invalid_url_is_shown_inline_and_nothing_is_lost_or_written(
    dialog: SettingsDialog, config_dir: Path, memory_keyring: MemoryKeyring, qtbot: Any
) -> None:
    before = (config_dir / SETTINGS_FILE_NAME).read_text()
    applied: list[Settings] = []
    dialog.settingsApplied.connect(applied.append)
    dialog.show()
    dialog.tabs.setCurrentIndex(tab_index(dialog, "Model"))
    dialog.postgres_url.setText("postgresql://db.example:notaport/cairn")
    dialog.postgres_password.setText("pw")
    dialog.system_prompt.setPlainText("Be brief.")

    qtbot.mouseClick(dialog.buttons.button(dialog.buttons.StandardButton.Ok), Qt.MouseButton.LeftButton)

    assert dialog.isVisible() and dialog.result() != QDialog.DialogCode.Accepted
    assert not dialog.error.isHidden()
    assert "Postgres URL" in dialog.error.text() and "notaport" in dialog.error.text()
    assert dialog.tabs.currentIndex() == tab_index(dialog, "Sync")  # taken to the field that is wrong
    assert dialog.postgres_url.text() == "postgresql://db.example:notaport/cairn"
    assert dialog.system_prompt.toPlainText() == "Be brief."
    assert applied == []
    assert (config_dir / SETTINGS_FILE_NAME).read_text() == before
    assert memory_keyring.passwords == {}

    dialog.postgres_url.setText("postgresql://db.example:5432/cairn")
    assert dialog.save() is not None
    assert dialog.error.isHidden()


def test_unwritable_settings_folder_is_reported_in_the_dialog(
    settings: Settings, secrets: SecretStore, tmp_path: Path, qtbot: Any
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the config folder should be")
    dialog = SettingsDialog(dataclasses.replace(settings, config_dir=blocker), secrets)
    qtbot.addWidget(dialog)
    dialog.pool_size.setValue(9)

    assert dialog.save() is None
    assert not dialog.error.isHidden()
    assert str(blocker) in dialog.error.text()
    assert dialog.pool_size.value() == 9


def test_model_settings_and_api_key_are_saved_the_key_only_in_the_keyring(
    dialog: SettingsDialog, config_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    dialog.preset.setCurrentIndex(dialog.preset.findData("openai"))
    dialog.preset.activated.emit(dialog.preset.currentIndex())
    assert dialog.base_url.text() == "https://api.openai.com/v1"
    dialog.model.setEditText("gpt-test")
    dialog.api_key.setText("sk-testkey-0123456789abcdefghij")
    dialog.system_prompt.setPlainText("You answer in French.")

    new = dialog.save()

    assert new is not None
    assert (new.model_preset, new.model_base_url, new.model_name, new.system_prompt) == (
        "openai",
        "https://api.openai.com/v1",
        "gpt-test",
        "You answer in French.",
    )
    assert memory_keyring.passwords == {
        (SERVICE, api_key_name("https://api.openai.com/v1")): "sk-testkey-0123456789abcdefghij"
    }
    assert "sk-testkey" not in files_text(config_dir)


def test_switching_servers_shows_each_servers_own_api_key(
    settings: Settings, secrets: SecretStore, memory_keyring: MemoryKeyring, qtbot: Any
) -> None:
    secrets.set(api_key_name("https://api.openai.com/v1"), "sk-openai-key-0123456789abcdef")
    dialog = SettingsDialog(settings, secrets)
    qtbot.addWidget(dialog)
    assert dialog.api_key.text() == ""  # the default server (Ollama) has none

    dialog.preset.setCurrentIndex(dialog.preset.findData("openai"))
    dialog.preset.activated.emit(dialog.preset.currentIndex())
    assert dialog.api_key.text() == "sk-openai-key-0123456789abcdef"

    dialog.preset.setCurrentIndex(dialog.preset.findData("lmstudio"))
    dialog.preset.activated.emit(dialog.preset.currentIndex())
    assert dialog.api_key.text() == ""  # the OpenAI key is not sent to another server
    assert dialog.save() is not None
    assert memory_keyring.passwords == {
        (SERVICE, api_key_name("https://api.openai.com/v1")): "sk-openai-key-0123456789abcdef"
    }


def test_editing_the_base_url_picks_the_matching_preset_or_custom(dialog: SettingsDialog, qtbot: Any) -> None:
    dialog.base_url.clear()
    qtbot.keyClicks(dialog.base_url, "http://localhost:1234/v1")
    assert dialog.preset.currentData() == "lmstudio"
    qtbot.keyClicks(dialog.base_url, "/x")
    assert dialog.preset.currentData() == "custom"
    assert dialog.values()["MODEL_PRESET"] == "custom"


def test_open_folder_opens_the_data_folder(dialog: SettingsDialog, settings: Settings, qtbot: Any) -> None:
    class Handler(QObject):
        def __init__(self) -> None:
            super().__init__()
            self.urls: list[QUrl] = []

        @Slot(QUrl)
        def open(self, url: QUrl) -> None:
            self.urls.append(url)

    handler = Handler()
    QDesktopServices.setUrlHandler("file", handler, "open")
    try:
        dialog.tabs.setCurrentIndex(2)
        assert dialog.data_dir.text() == str(settings.data_dir)
        qtbot.mouseClick(dialog.open_folder_button, Qt.MouseButton.LeftButton)
    finally:
        QDesktopServices.unsetUrlHandler("file")
    assert [u.toLocalFile() for u in handler.urls] == [str(settings.data_dir)]
    assert settings.data_dir.is_dir()


# --------------------------------------------------------------------------------------------- URL helpers


@pytest.mark.parametrize(
    ("url", "base", "user", "password", "sslmode"),
    [
        ("", "", "", "", "prefer"),
        ("postgresql://h/db", "postgresql://h/db", "", "", "prefer"),
        (
            "postgresql://u:p%3Aw@h:6432/db?sslmode=require&application_name=x",
            "postgresql://h:6432/db?application_name=x",
            "u",
            "p:w",
            "require",
        ),
        ("postgres://h1:5432,h2:5433/db?user=q&password=z", "postgres://h1:5432,h2:5433/db", "q", "z", "prefer"),
        ("host=h port=5 dbname=d user=u password=p sslmode=disable", "dbname=d host=h port=5", "u", "p", "disable"),
    ],
)
def test_postgres_url_splits_into_the_form_fields(url: str, base: str, user: str, password: str, sslmode: str) -> None:
    parts = split_postgres_url(url)
    assert (parts.base, parts.user, parts.password, parts.sslmode) == (base, user, password, sslmode)


def test_postgres_url_joins_user_and_sslmode_but_never_a_password() -> None:
    assert join_postgres_url("postgresql://h/db", "a b", "verify-ca") == "postgresql://a%20b@h/db?sslmode=verify-ca"
    assert join_postgres_url("postgresql://h/db?x=1", "", "prefer") == "postgresql://h/db?x=1"
    assert join_postgres_url("postgresql://old:pw@h/db", "", "prefer") == "postgresql://old@h/db"
    assert join_postgres_url("postgresql://old:pw@h/db", "new", "require") == "postgresql://new@h/db?sslmode=require"
    assert join_postgres_url("host=h dbname=d", "u", "require") == "dbname=d host=h user=u sslmode=require"
    assert join_postgres_url("  ", "u", "require") == ""


# --------------------------------------------------------------------------------------------- connection test


async def run_test_button(dialog: SettingsDialog, ticker: LoopTicker, bound: float) -> tuple[Any, float]:
    """Click "Test connection", wait for its result with the loop ticking; (result, seconds)."""
    ticker.start()
    started = time.monotonic()
    dialog.test_button.click()
    assert not dialog.test_button.isEnabled()
    assert dialog.test_result.text().startswith("Connecting to ")
    result = await wait_signal(dialog.connectionTested, bound)
    elapsed = time.monotonic() - started
    ticker.stop()
    assert dialog.test_button.isEnabled()
    assert dialog.test_result.text() == result.message
    # A connect on the loop's thread would stall it for the whole attempt (2 s against a silent server).
    assert ticker.max_gap < 0.5, f"the loop stalled for {ticker.max_gap * 1000:.0f} ms"
    return result, elapsed


def point_at(dialog: SettingsDialog, url: str, password: str | None = None, timeout: float = 2.0) -> None:
    clean, inline = split_password(url)
    parts = split_postgres_url(clean)
    dialog.postgres_url.setText(parts.base)
    dialog.postgres_user.setText(parts.user)
    dialog.postgres_password.setText(password if password is not None else inline or "")
    dialog.connect_timeout.setValue(timeout)


async def test_connection_refused_is_reported_at_once(
    dialog: SettingsDialog, pg_proxy: Any, pg_url: str, ticker: LoopTicker
) -> None:
    pg_proxy.refuse()
    point_at(dialog, pg_proxy.url_for(pg_url))

    result, _ = await run_test_button(dialog, ticker, bound=2.0)  # the connect timeout is 2 s: not waited out

    assert (result.ok, result.kind) == (False, "refused")
    assert result.message == f"Connection refused: nothing is listening on 127.0.0.1:{pg_proxy.port}"


async def test_silent_server_times_out_within_the_connect_timeout(
    dialog: SettingsDialog, pg_proxy: Any, pg_url: str, ticker: LoopTicker
) -> None:
    pg_proxy.blackhole()
    point_at(dialog, pg_proxy.url_for(pg_url), timeout=2.0)

    result, elapsed = await run_test_button(dialog, ticker, bound=4.0)

    assert (result.ok, result.kind) == (False, "timeout")
    assert result.message == f"No answer from 127.0.0.1:{pg_proxy.port} within 2 s"
    assert elapsed >= 1.9  # the bound of run_test_button (4 s) is the upper one
    assert len(ticker.ticks) > 100  # it kept ticking all along, not only at the end


async def test_wrong_password_is_named_and_the_right_one_connects(
    dialog: SettingsDialog, pg_cluster: Any, ticker: LoopTicker
) -> None:
    if not pg_cluster.has_password_role:
        pytest.skip(f"the server has no {PW_USER} role that needs a password")
    url = pg_cluster.create_database(owner=PW_USER)
    try:
        point_at(dialog, url, password="not-" + PW_PASSWORD)
        result, _ = await run_test_button(dialog, ticker, bound=3.0)
        assert (result.ok, result.kind) == (False, "auth")
        assert result.message == f"Password authentication failed for user {PW_USER}"

        point_at(dialog, url)
        result, _ = await run_test_button(dialog, ticker, bound=3.0)
        assert (result.ok, result.kind) == (True, "ok")
        assert result.message.startswith(f"Connected to {pg_cluster.host}:{pg_cluster.port}: PostgreSQL ")
    finally:
        pg_cluster.drop_database(url)


async def test_unknown_database_and_invalid_url_are_told_apart(pg_cluster: Any, pg_url: str) -> None:
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_db"
    result = await connection_test.test_connection(missing, None, 2.0)
    assert (result.kind, result.message) == (
        "unknown_database",
        f'The database "no_such_db" does not exist on {pg_cluster.host}:{pg_cluster.port}',
    )
    result = await connection_test.test_connection("postgresql://h:port/db", None, 2.0)
    assert result.kind == "invalid_url"
    assert result.message == "Not a valid PostgreSQL URL: the port 'port' is not a number"
    result = await connection_test.test_connection("https://example.com/db", None, 2.0)
    assert result.kind == "invalid_url"


def test_dns_failure_is_worded_as_a_name_that_does_not_resolve() -> None:
    error = psycopg.OperationalError(
        "failed to resolve host 'db.nowhere.invalid': [Errno -2] Name or service not known"
    )
    result = connection_test.classify(error, "postgresql://u@db.nowhere.invalid/db", 5.0)
    assert (result.kind, result.message) == (
        "dns",
        "Cannot find the host db.nowhere.invalid: the name does not resolve (DNS lookup failed)",
    )


async def test_closing_the_dialog_cancels_a_running_test(dialog: SettingsDialog, pg_proxy: Any, pg_url: str) -> None:
    pg_proxy.blackhole()
    point_at(dialog, pg_proxy.url_for(pg_url), timeout=30.0)
    dialog.test_button.click()
    task = dialog._test_task
    assert task is not None and not task.done()
    dialog.reject()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dialog.test_button.isEnabled()


# --------------------------------------------------------------------------------------------- model list


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


async def test_refresh_fills_the_model_list_from_the_server(
    dialog: SettingsDialog, model_server: ModelServer, ticker: LoopTicker, qtbot: Any
) -> None:
    dialog.base_url.setText(model_server.base_url)
    dialog.model.setEditText("")
    ticker.start()
    qtbot.mouseClick(dialog.refresh_button, Qt.MouseButton.LeftButton)
    models = await wait_signal(dialog.modelsRefreshed, 10)
    ticker.stop()

    assert models == sorted(DEFAULT_MODELS)
    assert [dialog.model.itemText(i) for i in range(dialog.model.count())] == sorted(DEFAULT_MODELS)
    assert dialog.model.currentText() == sorted(DEFAULT_MODELS)[0]
    assert dialog.models_result.text() == f"{len(DEFAULT_MODELS)} model(s) on this server"
    assert model_server.requests[-1].path == "/v1/models"
    assert ticker.max_gap < 0.5  # a request waited for on the loop's thread would stall it for its whole time


async def test_refresh_sends_the_api_key_and_says_when_it_is_refused(dialog: SettingsDialog, qtbot: Any) -> None:
    async with ModelServer(api_key="right-key") as server:
        dialog.base_url.setText(server.base_url)
        dialog.api_key.setText("wrong-key")
        dialog.refresh_button.click()
        message = await wait_signal(dialog.modelsRefreshed, 10)
        assert message == "The server refused the API key (HTTP 401)"
        assert dialog.models_result.text() == message
        assert dialog.refresh_button.isEnabled()

        dialog.api_key.setText("right-key")
        dialog.refresh_button.click()
        assert await wait_signal(dialog.modelsRefreshed, 10) == sorted(DEFAULT_MODELS)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_refresh_against_nothing_listening_says_it_cannot_reach_the_server(
    dialog: SettingsDialog, closed_port: int
) -> None:
    base_url = f"http://127.0.0.1:{closed_port}/v1"
    dialog.base_url.setText(base_url)
    dialog.refresh_button.click()
    message = await wait_signal(dialog.modelsRefreshed, 10)
    assert isinstance(message, str) and message.startswith(f"Cannot reach {base_url}")


# --------------------------------------------------------------------------------------------- applied to storage
# The app started as main.py starts it, on a Postgres database of the password-only role; the password is typed in
# Settings or in the password dialog, and storage must reach Postgres as that role without a restart.


@pytest.fixture
def pw_database(pg_cluster: Any) -> Iterator[str]:
    """A database owned by the password-only role; the URL as stored in settings: the user, no password."""
    if not pg_cluster.has_password_role:
        pytest.skip(f"the server has no {PW_USER} role that needs a password")
    url = pg_cluster.create_database(owner=PW_USER)
    yield split_password(url)[0]
    pg_cluster.drop_database(url)


def keyring_backend(kind: str) -> KeyringBackend:
    return MemoryKeyring() if kind == "keyring" else keyring.backends.fail.Keyring()


def start_cairn(tmp_path: Path, server: ModelServer, backend: KeyringBackend, url: str) -> Cairn:
    return cairn_factory(
        tmp_path, server, keyring=backend, settings={"POSTGRES_DATABASE_URL": url, "POSTGRES_CONNECT_TIMEOUT": 2}
    )


async def on_postgres_as(app: CairnApp, role: str) -> Storage:
    """Wait for the app's storage to reach Postgres; check it logged in as ``role``. The storage."""
    storage = app.storage
    assert storage is not None
    await wait_for_status(storage.manager, lambda s: s.active_tier == "postgres", timeout=WAIT)
    remote = storage.manager.remote
    assert remote is not None
    rows = await remote._fetch("SELECT current_user AS role")
    assert rows[0]["role"] == role
    badge = window_of(app).badge
    await until(lambda: badge.status() is not None and badge.status().active_tier == "postgres", "the badge")
    return storage


async def password_dialog(app: CairnApp) -> PostgresPasswordDialog:
    await until(lambda: app.password_dialog is not None and app.password_dialog.isVisible(), "the password dialog")
    assert app.password_dialog is not None
    return app.password_dialog


def answer(dialog: PostgresPasswordDialog, qtbot: Any, password: str) -> None:
    ok = dialog.buttons.button(dialog.buttons.StandardButton.Ok)
    assert not ok.isEnabled()  # nothing typed yet
    qtbot.keyClicks(dialog.password, password)
    assert ok.isEnabled() and dialog.password.echoMode() == dialog.password.EchoMode.Password
    qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)


def assert_not_in_files(tmp_path: Path, secret: str) -> None:
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "cairn.sqlite" for p in files), files
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"{secret!r} found in {path}"


@pytest.mark.parametrize("kind", ["keyring", "no keyring"])
async def test_a_password_typed_in_settings_reaches_postgres_without_a_restart(
    kind: str, tmp_path: Path, pw_database: str, model_server: ModelServer, qtbot: Any
) -> None:
    backend = keyring_backend(kind)
    async with start_cairn(tmp_path, model_server, backend, pw_database)() as app:
        window = window_of(app)
        old = app.storage
        assert old is not None
        refused = await wait_for_status(old.manager, lambda s: s.tiers["postgres"].state == "down", WAIT)
        assert "no password supplied" in refused.reason, refused.reason
        if app.password_dialog is not None:
            app.password_dialog.reject()  # the password dialog's own tests are below: this user uses the settings

        dialog = window.open_settings()
        assert dialog.postgres_user.text() == PW_USER  # type: ignore[attr-defined]
        assert dialog.postgres_password.text() == ""  # type: ignore[attr-defined]
        dialog.postgres_password.setText(PW_PASSWORD)  # type: ignore[attr-defined]
        assert dialog.save() is not None  # type: ignore[attr-defined]  # only the password changed
        dialog.close()

        await until(lambda: app.storage is not old and window.service is app.service, "storage reopened")
        # The old storage closes after the swap (CairnApp.reopen_storage): its writes settle first.
        await until(lambda: old.manager._closed, "the old storage closed")
        storage = await on_postgres_as(app, PW_USER)
        assert storage.manager.target is not None and storage.manager.target.password == PW_PASSWORD
        assert app.password_dialog is None
        key = password_key(pw_database)
        if kind == "keyring":
            assert backend.passwords == {(SERVICE, key): PW_PASSWORD}  # type: ignore[attr-defined]
        else:
            assert app.secrets is not None and not app.secrets.persistent
            assert app.secrets.get(key) == PW_PASSWORD
        await send_and_wait(qtbot, window, "stored in Postgres")
    assert_not_in_files(tmp_path, PW_PASSWORD)


async def test_without_a_keyring_the_password_is_asked_used_at_once_and_kept_for_the_session(
    tmp_path: Path, pw_database: str, model_server: ModelServer, qtbot: Any
) -> None:
    cairn = start_cairn(tmp_path, model_server, keyring.backends.fail.Keyring(), pw_database)
    async with cairn() as app:
        window = window_of(app)
        dialog = await password_dialog(app)  # asked at once: a user in the URL, no password, nowhere to keep one
        assert PW_USER in dialog.message.text()
        assert "kept in memory until Cairn quits" in dialog.message.text()
        old = app.storage
        answer(dialog, qtbot, PW_PASSWORD)

        await until(lambda: app.storage is not old, "storage reopened with the password")
        await on_postgres_as(app, PW_USER)
        assert app.password_dialog is None
        assert app.secrets is not None and app.secrets.get(password_key(pw_database)) == PW_PASSWORD

        # Kept for the session: storage reopened for another setting uses it and asks nothing.
        reopened = app.storage
        settings = window.open_settings()
        settings.pool_size.setValue(3)  # type: ignore[attr-defined]
        assert settings.save() is not None  # type: ignore[attr-defined]
        settings.close()
        await until(lambda: app.storage is not reopened, "storage reopened for the pool size")
        await on_postgres_as(app, PW_USER)
        assert app.password_dialog is None
        await send_and_wait(qtbot, window, "stored in Postgres")
    assert_not_in_files(tmp_path, PW_PASSWORD)

    # The next session has no keyring to read it from: it asks again.
    async with cairn() as app:
        dialog = await password_dialog(app)
        dialog.reject()
        assert app.storage is not None and app.storage.manager.status().active_tier == "sqlite"


async def test_a_refused_password_from_the_keyring_is_asked_again_and_the_answer_kept_there(
    tmp_path: Path, pw_database: str, model_server: ModelServer, qtbot: Any
) -> None:
    backend = MemoryKeyring()
    key = password_key(pw_database)
    backend.set_password(SERVICE, key, "an-old-password")
    async with start_cairn(tmp_path, model_server, backend, pw_database)() as app:
        dialog = await password_dialog(app)
        assert "refused" in dialog.message.text() and "keyring" in dialog.message.text()
        old = app.storage
        assert old is not None
        assert "password authentication failed" in old.manager.status().reason
        answer(dialog, qtbot, PW_PASSWORD)
        await until(lambda: app.storage is not old, "storage reopened with the password")
        await on_postgres_as(app, PW_USER)
        assert backend.passwords == {(SERVICE, key): PW_PASSWORD}


async def test_without_a_keyring_the_password_is_asked_while_the_server_is_away_and_used_when_it_is_back(
    tmp_path: Path, pw_database: str, pg_proxy: Any, model_server: ModelServer, qtbot: Any
) -> None:
    """A user in the URL, no password known, no keyring: asked after the first attempt, even though the server did
    not answer (it could not say that it wants one), so storage has the password when the server is back."""
    pg_proxy.refuse()
    url = pg_proxy.url_for(pw_database)
    async with start_cairn(tmp_path, model_server, keyring.backends.fail.Keyring(), url)() as app:
        dialog = await password_dialog(app)
        assert app.storage is not None
        postgres = app.storage.manager.status().tiers["postgres"]
        assert postgres.state == "down" and "refused" not in postgres.detail  # nothing refused the login
        old = app.storage
        answer(dialog, qtbot, PW_PASSWORD)
        await until(lambda: app.storage is not old, "storage reopened with the password")
        pg_proxy.pass_through()
        app.storage.manager.retry_now()  # or wait for the next attempt: a few seconds at most
        await on_postgres_as(app, PW_USER)


async def test_without_a_keyring_a_server_that_needs_no_password_is_not_asked_for_one(
    tmp_path: Path, pg_url: str, model_server: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="cairn.app")
    async with start_cairn(tmp_path, model_server, keyring.backends.fail.Keyring(), pg_url)() as app:
        await on_postgres_as(app, "postgres")  # a user in the URL, no password: the server trusts it
        assert app.password_dialog is None
        assert "asking for the Postgres password" not in caplog.text


# --------------------------------------------------------------------------------------------- layout


def test_the_dialog_opens_on_the_model_with_postgres_under_sync_and_rare_knobs_folded_away(
    dialog: SettingsDialog, qtbot: Any
) -> None:
    dialog.show()
    assert [dialog.tabs.tabText(i) for i in range(dialog.tabs.count())] == ["Model", "Sync", "Data", "Appearance"]
    assert dialog.tabs.currentIndex() == tab_index(dialog, "Model")
    assert dialog.model.isVisible() and dialog.base_url.isVisible()
    assert dialog.first_token_timeout.isVisible() and dialog.token_timeout.isVisible()

    dialog.tabs.setCurrentIndex(tab_index(dialog, "Sync"))
    assert dialog.postgres_url.isVisible() and dialog.test_button.isVisible()
    advanced = (dialog.pool_size, dialog.prefer_async, dialog.connect_timeout)
    assert not any(widget.isVisible() for widget in advanced)
    qtbot.mouseClick(dialog.advanced_button, Qt.MouseButton.LeftButton)
    assert all(widget.isVisible() for widget in advanced)
    qtbot.mouseClick(dialog.advanced_button, Qt.MouseButton.LeftButton)
    assert not any(widget.isVisible() for widget in advanced)

    # A problem with a folded-away setting unfolds it and takes the user there.
    dialog.tabs.setCurrentIndex(tab_index(dialog, "Model"))
    dialog.show_error("POSTGRES_POOL_SIZE=0 (from .env): expected an integer between 1 and 100", "POSTGRES_POOL_SIZE")
    assert dialog.tabs.currentIndex() == tab_index(dialog, "Sync")
    assert dialog.pool_size.isVisible()


def test_the_wait_limits_are_saved_to_the_settings_file(
    dialog: SettingsDialog, config_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    dialog.first_token_timeout.setValue(600)
    dialog.token_timeout.setValue(45)
    new = dialog.save()
    assert new is not None
    assert (new.model_first_token_timeout, new.model_token_timeout) == (600.0, 45.0)
    stored = json.loads((config_dir / SETTINGS_FILE_NAME).read_text())
    assert stored["MODEL_FIRST_TOKEN_TIMEOUT"] == 600 and stored["MODEL_TOKEN_TIMEOUT"] == 45
