"""storage/secrets.py: the keyring-or-memory store, URL password helpers, masking in text and logs."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backends.null
import keyring.errors
import pytest

from storage.secrets import (
    NO_KEYRING_WARNING,
    SecretStore,
    install_log_masking,
    mask_secrets,
    mask_url,
    password_key,
    resolve_password,
    split_password,
    store_url_password,
    uninstall_log_masking,
)
from tests.support.keyring_backend import MemoryKeyring, memory_keyring, no_keyring

__all__ = ["memory_keyring", "no_keyring"]  # fixtures, imported for pytest to find

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------- SecretStore


def test_store_round_trips_through_the_os_keyring(memory_keyring: MemoryKeyring) -> None:
    store = SecretStore()
    store.set("db", "hunter2")
    assert store.get("db") == "hunter2"
    assert memory_keyring.passwords == {("cairn", "db"): "hunter2"}
    assert store.persistent is True
    assert store.warning is None
    assert store.backend_name.endswith("MemoryKeyring")


def test_store_reads_what_an_earlier_session_stored(memory_keyring: MemoryKeyring) -> None:
    SecretStore("svc").set("token", "abc")
    assert SecretStore("svc").get("token") == "abc"
    assert SecretStore("other").get("token") is None


def test_delete_forgets_and_deleting_a_missing_secret_is_fine(memory_keyring: MemoryKeyring) -> None:
    store = SecretStore()
    store.set("db", "x")
    store.delete("db")
    store.delete("db")
    store.delete("never-set")
    assert store.get("db") is None
    assert memory_keyring.passwords == {}


def test_without_a_keyring_secrets_live_for_the_session_with_a_warning(
    no_keyring: keyring.backend.KeyringBackend,
) -> None:
    store = SecretStore()
    assert store.persistent is False
    assert store.warning == NO_KEYRING_WARNING
    assert "session" in store.backend_name
    store.set("db", "hunter2")
    assert store.get("db") == "hunter2"
    store.delete("db")
    assert store.get("db") is None
    # a new store is a new session: nothing was kept anywhere
    store.set("db", "hunter2")
    assert SecretStore().get("db") is None


def test_no_keyring_warning_is_logged(
    no_keyring: keyring.backend.KeyringBackend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="storage.secrets"):
        SecretStore().find_keyring()
    assert "No OS keyring is available" in caplog.text


def test_a_store_finds_its_keyring_only_when_asked() -> None:
    """Importing keyring and choosing its backend took 70 ms of the start before the first paint: a store is made
    without it, and finds it on a worker thread (``find_keyring``, as the app does after the window shows) or at
    its first use."""
    code = (
        "import sys, threading\n"
        "from storage.secrets import SecretStore\n"
        "store = SecretStore()\n"
        "assert 'keyring' not in sys.modules, 'made with keyring'\n"
        "worker = threading.Thread(target=store.find_keyring)\n"
        "worker.start(); worker.join()\n"
        "assert 'keyring' in sys.modules\n"
        "print(store.backend_name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_without_a_keyring_the_warning_promises_only_what_happens() -> None:
    """Cairn asks for the Postgres password when it needs it (gui/password_dialog.py); nothing asks for an API key
    at the next start, so the warning must not say that secrets "will be asked again"."""
    for store in (SecretStore(backend=keyring.backends.null.Keyring()), SecretStore(backend=_BrokenKeyring())):
        store.set("db", "x")
        assert store.warning is not None
        assert "asked again" not in store.warning and "next start" not in store.warning, store.warning
        assert "asks for the Postgres password when it needs it" in store.warning
        assert "API key must be entered again" in store.warning


def test_null_backend_counts_as_no_keyring() -> None:
    store = SecretStore(backend=keyring.backends.null.Keyring())
    assert store.persistent is False
    store.set("db", "x")
    assert store.get("db") == "x"


def test_keyring_that_cannot_initialise_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise keyring.errors.NoKeyringError("nothing here")

    monkeypatch.setattr(keyring, "get_keyring", refuse)
    store = SecretStore()
    assert store.persistent is False
    assert store.warning is not None


class _BrokenKeyring(MemoryKeyring):
    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError(f"locked; was given {password}")


def test_keyring_failing_on_write_keeps_the_secret_for_the_session() -> None:
    backend = _BrokenKeyring()
    store = SecretStore(backend=backend)
    assert store.persistent is True
    store.set("db", "hunter2")
    assert store.get("db") == "hunter2"
    assert store.persistent is False
    assert store.warning is not None
    assert "session" in store.warning
    assert "PasswordSetError" in store.warning
    assert backend.passwords == {}


def test_store_repr_shows_no_secret(memory_keyring: MemoryKeyring) -> None:
    store = SecretStore()
    store.set("db", "hunter2")
    assert "hunter2" not in repr(store)


# --------------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "clean", "password"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u@h:5432/db", "pw"),
        ("postgres://u:pw@h/db", "postgres://u@h/db", "pw"),
        ("postgresql://u@h/db", "postgresql://u@h/db", None),
        ("postgresql://h/db", "postgresql://h/db", None),
        ("postgresql://u:p%40ss%3Aw%2F@h/db", "postgresql://u@h/db", "p@ss:w/"),
        ("postgresql://u:p@ss@h/db", "postgresql://u@h/db", "p@ss"),
        ("postgresql://u:pw@[::1]:5433/db", "postgresql://u@[::1]:5433/db", "pw"),
        ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u@h1:5432,h2:5433/db", "pw"),
        ("postgresql://u:@h/db", "postgresql://u@h/db", None),
        ("postgresql://:pw@h/db", "postgresql://h/db", "pw"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?sslmode=require", "pw"),
        ("postgresql://u@h/db?password=pw", "postgresql://u@h/db", "pw"),
        ("", "", None),
    ],
)
def test_split_password_of_urls(url: str, clean: str, password: str | None) -> None:
    assert split_password(url) == (clean, password)


def test_split_password_of_conninfo_strings() -> None:
    clean, password = split_password("host=h port=5432 user=u password='a b\\'c' dbname=d")
    assert password == "a b'c"
    assert "password" not in clean
    assert password_key(clean) == "postgres:u@h:5432/d"
    assert split_password("host=h dbname=d") == ("host=h dbname=d", None)


def test_split_password_rejects_garbage_without_quoting_it() -> None:
    with pytest.raises(ValueError) as info:
        split_password("host='unterminated password=hunter2")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://alice:s3cr3t@db.example.com/app", "postgres://alice:***@db.example.com/app"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql://u:p%40ss%3Aw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss:w@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u@[fe80::1]:5432/db", "postgresql://u@[fe80::1]:5432/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("host=h user=u password=pw dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h user=u password='p w' dbname=d", "host=h user=u password=*** dbname=d"),
        ("", ""),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    "garbage",
    [
        "://", "::::@@@", "postgresql://", "postgresql://@", "postgresql://:@/", "\x00\xff", "a" * 10_000,
        None, b"x",
    ],
)
def test_mask_url_never_raises_on_garbage(garbage: object) -> None:
    assert isinstance(mask_url(garbage), str)  # type: ignore[arg-type]


def test_mask_url_of_an_object_that_cannot_be_printed() -> None:
    assert mask_url(_Unprintable()) == "***"  # type: ignore[arg-type]


def test_password_key_is_stable_across_forms_and_ignores_the_password() -> None:
    key = password_key("postgresql://u:pw@h/db")
    assert key == "postgres:u@h:5432/db"
    assert password_key("postgresql://u:other@h:5432/db") == key
    assert password_key("host=h port=5432 user=u dbname=db") == key
    assert password_key("postgresql://v@h/db") != key
    assert password_key("postgresql://u@h:5433/db") != key
    assert password_key("postgresql://u@h/other") != key


def test_store_url_password_moves_the_password(memory_keyring: MemoryKeyring) -> None:
    store = SecretStore()
    clean = store_url_password("postgresql://u:p%40ss@h/db", store)
    assert clean == "postgresql://u@h/db"
    assert memory_keyring.passwords == {("cairn", "postgres:u@h:5432/db"): "p@ss"}
    assert resolve_password(clean, store) == "p@ss"


def test_store_url_password_without_password_stores_nothing(memory_keyring: MemoryKeyring) -> None:
    assert store_url_password("postgresql://u@h/db", SecretStore()) == "postgresql://u@h/db"
    assert memory_keyring.passwords == {}


def test_resolve_password_prefers_the_url_then_the_store(memory_keyring: MemoryKeyring) -> None:
    store = SecretStore()
    store_url_password("postgresql://u:stored@h/db", store)
    assert resolve_password("postgresql://u:inline@h/db", store) == "inline"
    assert resolve_password("postgresql://u@h/db", store) == "stored"
    assert resolve_password("postgresql://nobody@h/db", store) is None
    assert resolve_password("", store) is None


# --------------------------------------------------------------------------------------------- free text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("cannot connect to postgresql://u:hunter2@h:5432/db: refused", "hunter2"),
        ("tried postgres://u:hun%40ter2@[::1]/db and gave up", "hun%40ter2"),
        ("conninfo host=h password=hunter2 dbname=d", "hunter2"),
        ("conninfo host=h password = 'hunter 2' dbname=d", "hunter 2"),
        ('{"user": "u", "password": "hunter2"}', "hunter2"),
        ("headers: Authorization: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
        ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
        ("{'authorization': 'Bearer tok_1234567890'}", "tok_1234567890"),
        ("key sk-proj-AbCdEf0123456789xyzXYZ in use", "AbCdEf0123456789xyzXYZ"),
        ("api_key=abcdef123456 sent", "abcdef123456"),
        ("X-Api-Key: abcdef123456", "abcdef123456"),
    ],
)
def test_mask_secrets_hides_the_secret(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


def test_mask_secrets_keeps_ordinary_text() -> None:
    text = (
        "connected to postgresql://u@h:5432/db in 3 ms; password authentication ok; "
        "model http://localhost:11434/v1 max_tokens=5 [::1]:5432"
    )
    assert mask_secrets(text) == text


def test_mask_secrets_is_idempotent() -> None:
    once = mask_secrets("postgresql://u:pw@h/db password=x Bearer abcdefghijkl")
    assert mask_secrets(once) == once


# --------------------------------------------------------------------------------------------- logging


@pytest.fixture
def log_masking() -> Iterator[None]:
    uninstall_log_masking()
    install_log_masking()
    try:
        yield
    finally:
        uninstall_log_masking()


def test_log_records_are_masked_args_included(log_masking: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("cairn.test.child").info("connecting to %s", "postgresql://u:hunter2@h/db")
        logging.getLogger().warning("conninfo %s", {"password": "hunter2"})
    assert "hunter2" not in caplog.text
    assert "postgresql://u:***@h/db" in caplog.text
    assert all("hunter2" not in record.getMessage() for record in caplog.records)


def test_logged_tracebacks_are_masked(log_masking: None, caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise ConnectionError("postgresql://u:hunter2@h/db refused")
    except ConnectionError:
        logging.getLogger("cairn.test").exception("storage failed")
    assert "storage failed" in caplog.text
    assert "ConnectionError" in caplog.text
    assert "hunter2" not in caplog.text


def test_records_without_secrets_keep_their_args(log_masking: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("cairn.test").info("pool size %d", 5)
    assert caplog.records[-1].args == (5,)
    assert caplog.records[-1].getMessage() == "pool size 5"


def test_install_log_masking_is_idempotent(log_masking: None, caplog: pytest.LogCaptureFixture) -> None:
    factory = logging.getLogRecordFactory()
    install_log_masking()
    install_log_masking()
    assert logging.getLogRecordFactory() is factory
    uninstall_log_masking()
    assert not getattr(logging.getLogRecordFactory(), "_cairn_masks_secrets", False)


def test_a_bad_format_string_still_reaches_logging_error_handling(log_masking: None) -> None:
    # The factory must not raise into the caller; logging reports the bad call itself.
    record = logging.getLogRecordFactory()("n", logging.INFO, __file__, 1, "%d", ("x",), None)
    assert record.args == ("x",)
