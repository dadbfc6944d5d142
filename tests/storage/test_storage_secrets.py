"""A Postgres password typed into POSTGRES_DATABASE_URL: it goes to the keyring and nowhere else, and still works.

Each scenario runs the real path: Settings from load_settings / save_settings, a SecretStore over the active keyring
backend, storage.factory.open_storage, a graph turn synced to Postgres as the password-only role ``cairn_pw``, close.
Then every byte of every file under the settings, data and working folders is searched for the password, and so is
every log record (caplog at DEBUG over the whole scenario, log masking not installed) and everything status() says.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest

from storage.factory import Storage, open_storage
from storage.secrets import NO_KEYRING_WARNING, SecretStore, password_key, split_password
from storage.settings import SETTINGS_FILE_NAME, Settings, load_settings, save_settings
from tests.support.chatgraph import build_graph, config, messages, turn
from tests.support.keyring_backend import MemoryKeyring
from tests.support.pgcluster import PW_PASSWORD, PW_USER, PgServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


class Dirs:
    def __init__(self, root: Path) -> None:
        self.config = root / "config"
        self.data = root / "data"
        self.work = root / "work"
        self.work.mkdir()

    def scanned(self) -> list[Path]:
        return [p for d in (self.config, self.data, self.work) if d.exists() for p in d.rglob("*") if p.is_file()]


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


@pytest.fixture
def pw_url(pg_cluster: PgServer) -> str:
    """A fresh database owned by the password-only role; the URL carries the password."""
    if not pg_cluster.has_password_role:
        pytest.skip("the server has no password role (external TEST_POSTGRES_URL)")
    url = pg_cluster.create_database(owner=PW_USER)
    assert f"{PW_USER}:{PW_PASSWORD}@" in url
    yield url
    pg_cluster.drop_database(url)


def with_query_password(url: str) -> str:
    """The same target with the password as a ``?password=`` parameter instead of in the userinfo."""
    clean, password = split_password(url)
    assert password == PW_PASSWORD
    return f"{clean}?password={password}"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_not_logged(caplog: pytest.LogCaptureFixture, secret: str) -> None:
    assert caplog.records, "the scenario logged nothing: the check would prove nothing"
    for record in caplog.records:
        parts = [record.getMessage(), repr(record.args), record.exc_text or "", record.stack_info or ""]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        text = "\n".join(parts)
        assert secret not in text, f"{record.name}:{record.levelname}: {text[:500]}"
    assert secret not in caplog.text


def assert_not_in_files(dirs: Dirs, secret: str) -> None:
    files = dirs.scanned()
    assert any(p.name == "cairn.sqlite" for p in files), files  # the scan saw the database
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"{secret!r} found in {path}"


async def synced_turn(storage: Storage, thread_id: str, text: str) -> None:
    """A graph turn, then wait until Postgres holds its latest checkpoint."""
    graph = build_graph(storage.saver)
    await turn(graph, thread_id, text)
    latest = (await graph.aget_state(config(thread_id))).config["configurable"]["checkpoint_id"]

    async def there() -> bool:
        remote = storage.manager.remote
        return remote is not None and (thread_id, "", latest) in await remote.checkpoint_keys(thread_id)

    await eventually(there, timeout=15, message="the turn reached Postgres")


async def connected_role(storage: Storage) -> str:
    remote = storage.manager.remote
    assert remote is not None
    rows = await remote._fetch("SELECT current_user AS role")
    return str(rows[0]["role"])


async def run_session(
    settings: Settings, store: SecretStore, secret: str, thread_id: str, text: str
) -> tuple[Storage, list[Any]]:
    """Open storage from settings, check it reached Postgres as cairn_pw, sync one turn, close."""
    events: list[Any] = []
    storage = await open_storage(settings, store, wait_for_postgres=True)
    try:
        storage.manager.subscribe(lambda status, event: events.append((status.to_json(), event)))
        status = storage.manager.status()
        assert status.active_tier == "postgres", status
        assert await connected_role(storage) == PW_USER
        assert storage.manager.target is not None
        assert secret not in storage.manager.target.url  # the URL in use has no password; the target's field does
        await synced_turn(storage, thread_id, text)
        shown = [str(storage.manager.status().to_json()), *map(str, events), repr(settings), str(store)]
        for text_shown in shown:
            assert secret not in text_shown
    finally:
        await storage.close()
    return storage, events


# --- an OS keyring --------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["userinfo", "query"])
async def test_password_in_the_environment_url_moves_to_the_keyring(
    form: str, pw_url: str, dirs: Dirs, memory_keyring: MemoryKeyring, debug_logs: pytest.LogCaptureFixture
) -> None:
    url = pw_url if form == "userinfo" else with_query_password(pw_url)
    environ = {"POSTGRES_DATABASE_URL": url, "CAIRN_DATA_DIR": str(dirs.data), "POSTGRES_CONNECT_TIMEOUT": "3"}
    settings = load_settings(environ=environ, cwd=dirs.work, config_dir=dirs.config)
    store = SecretStore()
    assert store.persistent and store.warning is None
    thread_id = f"s-{uuid.uuid4().hex[:8]}"

    await run_session(settings, store, PW_PASSWORD, thread_id, "hello from the environment")

    clean, _ = split_password(url)
    assert memory_keyring.passwords == {("cairn", password_key(clean)): PW_PASSWORD}
    assert_not_in_files(dirs, PW_PASSWORD)
    assert_not_logged(debug_logs, PW_PASSWORD)

    # Next start, the URL no longer carries the password (say it was saved without it): the keyring answers.
    settings = load_settings(environ={**environ, "POSTGRES_DATABASE_URL": clean}, cwd=dirs.work, config_dir=dirs.config)
    await run_session(settings, SecretStore(), PW_PASSWORD, thread_id, "and again from the keyring")
    assert_not_in_files(dirs, PW_PASSWORD)
    assert_not_logged(debug_logs, PW_PASSWORD)


@pytest.mark.parametrize("form", ["userinfo", "query"])
async def test_password_saved_in_settings_lives_in_the_keyring_only(
    form: str, pw_url: str, dirs: Dirs, memory_keyring: MemoryKeyring, debug_logs: pytest.LogCaptureFixture
) -> None:
    url = pw_url if form == "userinfo" else with_query_password(pw_url)
    save_settings(
        {"POSTGRES_DATABASE_URL": url, "CAIRN_DATA_DIR": str(dirs.data), "POSTGRES_CONNECT_TIMEOUT": 3},
        config_dir=dirs.config,
        secrets=SecretStore(),
    )
    clean, _ = split_password(url)
    saved = (dirs.config / SETTINGS_FILE_NAME).read_text(encoding="utf-8")
    assert clean in saved and PW_PASSWORD not in saved
    assert memory_keyring.passwords == {("cairn", password_key(clean)): PW_PASSWORD}

    # A new session: settings from the file only, a new store over the same keyring.
    settings = load_settings(environ={}, cwd=dirs.work, config_dir=dirs.config)
    assert settings.postgres_url == clean
    thread_id = f"s-{uuid.uuid4().hex[:8]}"
    await run_session(settings, SecretStore(), PW_PASSWORD, thread_id, "saved settings")

    assert_not_in_files(dirs, PW_PASSWORD)
    assert_not_logged(debug_logs, PW_PASSWORD)

    # the conversation is there after a restart, read back through the same path
    settings = load_settings(environ={}, cwd=dirs.work, config_dir=dirs.config)
    storage = await open_storage(settings, SecretStore(), wait_for_postgres=True)
    try:
        found = await messages(build_graph(storage.saver), thread_id)
        assert [m.content for m in found[::2]] == ["saved settings"]
    finally:
        await storage.close()


async def test_missing_keyring_password_gives_sqlite_with_a_reason(
    pw_url: str, dirs: Dirs, memory_keyring: MemoryKeyring, debug_logs: pytest.LogCaptureFixture
) -> None:
    clean, _ = split_password(pw_url)
    save_settings(
        {"POSTGRES_DATABASE_URL": clean, "CAIRN_DATA_DIR": str(dirs.data)},
        config_dir=dirs.config,
        secrets=SecretStore(),
    )
    assert memory_keyring.passwords == {}
    settings = load_settings(environ={}, cwd=dirs.work, config_dir=dirs.config)
    storage = await open_storage(settings, SecretStore(), wait_for_postgres=True)
    try:
        status = storage.manager.status()
        assert status.active_tier == "sqlite"
        assert "password" in status.reason, status.reason  # libpq: no password supplied / authentication failed
        await turn(build_graph(storage.saver), "kept-locally", "not lost")
    finally:
        await storage.close()
    assert_not_logged(debug_logs, PW_PASSWORD)


# --- no keyring -----------------------------------------------------------------------------------------


async def test_without_a_keyring_the_password_works_for_the_session_only(
    pw_url: str,
    dirs: Dirs,
    no_keyring: Any,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    store = SecretStore()
    assert store.persistent is False
    assert store.warning == NO_KEYRING_WARNING

    environ = {"POSTGRES_DATABASE_URL": pw_url, "CAIRN_DATA_DIR": str(dirs.data), "POSTGRES_CONNECT_TIMEOUT": "3"}
    settings = load_settings(environ=environ, cwd=dirs.work, config_dir=dirs.config)
    thread_id = f"s-{uuid.uuid4().hex[:8]}"
    storage, _ = await run_session(settings, store, PW_PASSWORD, thread_id, "no keyring here")
    assert storage.manager.status().keyring == "memory (this session only)"
    clean, _ = split_password(pw_url)
    assert store.get(password_key(clean)) == PW_PASSWORD  # kept in this process, for this session

    # Saved settings, same session: the file has no password, the session's memory does.
    save_settings({"POSTGRES_DATABASE_URL": pw_url}, config_dir=dirs.config, secrets=store)
    saved = (dirs.config / SETTINGS_FILE_NAME).read_text(encoding="utf-8")
    assert clean in saved and PW_PASSWORD not in saved
    settings = load_settings(environ={"CAIRN_DATA_DIR": str(dirs.data)}, cwd=dirs.work, config_dir=dirs.config)
    assert settings.postgres_url == clean
    await run_session(settings, store, PW_PASSWORD, thread_id, "same session, from memory")

    assert_not_in_files(dirs, PW_PASSWORD)
    assert any(NO_KEYRING_WARNING in r.getMessage() for r in debug_logs.records)
    assert_not_logged(debug_logs, PW_PASSWORD)

    # The next session has nothing: Postgres refuses us, the turn is kept locally, the reason says why.
    next_store = SecretStore()
    assert next_store.get(password_key(clean)) is None
    storage = await open_storage(settings, next_store, wait_for_postgres=True)
    try:
        status = storage.manager.status()
        assert status.active_tier == "sqlite"
        assert "password" in status.reason, status.reason
        found = await messages(build_graph(storage.saver), thread_id)
        assert [m.content for m in found[::2]] == ["no keyring here", "same session, from memory"]
    finally:
        await storage.close()
