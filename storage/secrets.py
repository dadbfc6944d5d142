"""Secrets: the OS keyring (or this session's memory when there is none) and masking for display and logs.

No secret is ever written to a file by this module. Where no keyring backend works, secrets live in a dict in
this process until it exits, and `SecretStore.warning` says so for the user.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

log = logging.getLogger(__name__)

MASK = "***"
DEFAULT_SERVICE = "cairn"
# What happens without a keyring, in the user's words: the app asks for the Postgres password when it needs one
# (gui/password_dialog.py); nothing asks for an API key.
_SESSION_ONLY = (
    "passwords and API keys are kept for this session only. Cairn asks for the Postgres password when it needs it; "
    "an API key must be entered again in Settings after a restart."
)
NO_KEYRING_WARNING = f"No OS keyring is available: {_SESSION_ONLY}"



def _keyring_failures() -> tuple[type[BaseException], ...]:
    """What a keyring call raises when the keyring does not work. OSError: some backends let the transport's error
    (D-Bus socket, Keychain) through unwrapped."""
    import keyring.errors

    return (keyring.errors.KeyringError, OSError)


def _unusable_backends() -> tuple[type[KeyringBackend], ...]:
    """Backends that exist but cannot keep anything: the "fail" one raises, the "null" one silently forgets."""
    import keyring.backends.fail
    import keyring.backends.null

    return (keyring.backends.fail.Keyring, keyring.backends.null.Keyring)


class SecretStore:
    """Named secrets for one service: the OS keyring when it works, else memory for this session.

    `backend` is for callers that want a specific keyring backend; by default the active one
    (`keyring.get_keyring()`) is used, as chosen when the store first needs it: importing keyring and finding its
    backend takes 70 ms, which the app spends on a worker thread after its window shows (``find_keyring``), not
    before.
    """

    def __init__(self, service: str = DEFAULT_SERVICE, *, backend: KeyringBackend | None = None) -> None:
        self.service = service
        self._memory: dict[str, str] = {}
        self._given = backend
        self._backend: KeyringBackend | None = None
        self._warning: str | None = None
        self._found = False
        self._finding = threading.Lock()

    def find_keyring(self) -> None:
        """Choose the keyring backend, once (any thread; every other method does it first when not done yet)."""
        with self._finding:
            if self._found:
                return
            try:
                import keyring

                chosen = self._given if self._given is not None else keyring.get_keyring()
            except _keyring_failures() as exc:
                self._fall_back(exc)
            else:
                if isinstance(chosen, _unusable_backends()):
                    self._fall_back(None)
                else:
                    self._backend = chosen
            self._found = True

    def _keyring(self) -> KeyringBackend | None:
        if not self._found:
            self.find_keyring()
        return self._backend

    @property
    def warning(self) -> str | None:
        """What the user must know when secrets cannot outlive this session (None while the keyring works)."""
        self._keyring()
        return self._warning

    @property
    def persistent(self) -> bool:
        """True when secrets set now outlive this process (an OS keyring accepted them)."""
        return self._keyring() is not None

    @property
    def backend_name(self) -> str:
        backend = self._keyring()
        if backend is None:
            return "memory (this session only)"
        kind = type(backend)
        return f"{kind.__module__}.{kind.__qualname__}"

    def get(self, name: str) -> str | None:
        if name in self._memory:
            return self._memory[name]
        backend = self._keyring()
        if backend is None:
            return None
        try:
            return backend.get_password(self.service, name)
        except _keyring_failures() as exc:
            self._fall_back(exc)
            return None

    def set(self, name: str, value: str) -> None:
        if not name:
            raise ValueError("a secret needs a name")
        backend = self._keyring()
        if backend is not None:
            try:
                backend.set_password(self.service, name, value)
            except _keyring_failures() as exc:
                self._fall_back(exc)
            else:
                self._memory.pop(name, None)
                return
        self._memory[name] = value

    def delete(self, name: str) -> None:
        """Forget a secret; deleting one that does not exist is not an error."""
        import keyring.errors

        self._memory.pop(name, None)
        backend = self._keyring()
        if backend is None:
            return
        try:
            backend.delete_password(self.service, name)
        except keyring.errors.PasswordDeleteError:
            pass  # backends raise this when there was nothing to delete
        except _keyring_failures() as exc:
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException | None) -> None:
        # One failure switches the whole store to memory: half the secrets in the keyring and half in
        # memory would make "persistent" meaningless to the user.
        self._backend = None
        if exc is None:
            self._warning = NO_KEYRING_WARNING
        else:
            reason = mask_secrets(f"{type(exc).__name__}: {exc}")
            self._warning = f"The OS keyring failed ({reason}): {_SESSION_ONLY}"
        log.warning("%s", self._warning)

    def __repr__(self) -> str:
        return f"SecretStore(service={self.service!r}, backend={self.backend_name!r})"


# --------------------------------------------------------------------------------------------- URLs


def _is_url(text: str) -> bool:
    return "://" in text


def _split_authority(url: str) -> tuple[str, str, str]:
    """(scheme + "://", authority, rest) where rest starts at the path, query or fragment."""
    scheme, _, after = url.partition("://")
    end = len(after)
    for stop in "/?#":
        index = after.find(stop)
        if index != -1:
            end = min(end, index)
    return scheme + "://", after[:end], after[end:]


def _split_query_password(rest: str) -> tuple[str, str | None]:
    """Remove `password=` from a URL's query string, which libpq accepts as well as the userinfo."""
    path, mark, query_and_fragment = rest.partition("?")
    if not mark:
        return rest, None
    query, hash_mark, fragment = query_and_fragment.partition("#")
    kept: list[str] = []
    password: str | None = None
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if unquote(name).lower() == "password":
            password = unquote(value)
        else:
            kept.append(item)
    clean = path + ("?" + "&".join(kept) if kept else "") + hash_mark + fragment
    return clean, password


def split_password(url: str) -> tuple[str, str | None]:
    """Return `url` without its password, and the password (percent-decoded), or None if it has none.

    Handles URLs (postgresql://, postgres://, and any scheme://user:password@host) including a
    `password=` query parameter, and libpq key=value connection strings. An empty password counts as none.
    Raises ValueError for a key=value string libpq cannot parse (the message does not quote it).
    """
    if not url.strip():
        return url, None
    if _is_url(url):
        scheme, authority, rest = _split_authority(url)
        password: str | None = None
        if "@" in authority:
            userinfo, _, hosts = authority.rpartition("@")
            user, colon, raw_password = userinfo.partition(":")
            if colon:
                password = unquote(raw_password)
            authority = f"{user}@{hosts}" if user else hosts
        rest, query_password = _split_query_password(rest)
        password = password or query_password
        return scheme + authority + rest, password or None
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # psycopg costs start-up time; only here

    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # psycopg raises ProgrammingError; we only know "libpq could not parse it"
        raise ValueError("not a valid PostgreSQL connection string") from exc
    inline = params.pop("password", None)
    if inline is None:
        return url, None
    return make_conninfo("", **params), str(inline) or None


def mask_url(url: str) -> str:
    """The URL or connection string with its password shown as `***`; never raises."""
    try:
        text = url if isinstance(url, str) else str(url)
    except Exception:
        return MASK
    try:
        if _is_url(text):
            scheme, authority, rest = _split_authority(text)
            if "@" in authority:
                userinfo, _, hosts = authority.rpartition("@")
                user, colon, _ = userinfo.partition(":")
                if colon:
                    authority = f"{user}:{MASK}@{hosts}"
            return mask_secrets(scheme + authority + rest)
        return mask_secrets(text)
    except Exception:
        return MASK


def password_key(url: str) -> str:
    """A stable keyring entry name for the database a URL points at: `postgres:user@host:port/dbname`.

    The URL and key=value forms of one target give the same name; a missing port is 5432 and a missing
    host is localhost. Raises ValueError if libpq cannot parse `url`.
    """
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception as exc:
        raise ValueError("not a valid PostgreSQL connection string") from exc
    user = str(params.get("user") or "")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or "")
    return f"postgres:{user}@{host}:{port}/{dbname}"


def url_user(url: str) -> str:
    """The user a URL or connection string logs in as, or "" when it names none (libpq then uses the OS user)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return str(conninfo_to_dict(url).get("user") or "")
    except Exception:  # psycopg's ProgrammingError: libpq cannot parse it, so it names no one
        return ""


def store_url_password(url: str, store: SecretStore) -> str:
    """Move the password out of `url` into `store` (under `password_key`) and return the URL without it."""
    clean, password = split_password(url)
    if password is not None:
        store.set(password_key(clean), password)
    return clean


def resolve_password(url: str, store: SecretStore) -> str | None:
    """The password to connect with: the one inside `url` if any, else the one kept for it in `store`."""
    if not url.strip():
        return None
    clean, password = split_password(url)
    if password is not None:
        return password
    return store.get(password_key(clean))


# --------------------------------------------------------------------------------------------- free text

_SUBSTITUTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@, greedy up to the last "@" before the path: a raw "@" in a password is covered.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@?#]*):[^\s/?#]*@"), rf"\1:{MASK}@"),
    # password=... in conninfo strings and query strings, "password": "..." in JSON and reprs.
    (
        re.compile(
            r"""(?i)(\b(?:password|passwd|pwd)["']?\s*[:=]\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&,;'"]+)"""
        ),
        rf"\1{MASK}",
    ),
    # Authorization headers, with or without a scheme word.
    (
        re.compile(r"""(?i)(\bauthorization["']?\s*[:=]\s*["']?(?:(?:bearer|basic|token)\s+)?)[^\s,;'"]+"""),
        rf"\1{MASK}",
    ),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*"), rf"\1{MASK}"),
    (
        re.compile(r"""(?i)(\b(?:x-)?api[-_]?key["']?\s*[:=]\s*["']?)[^\s,;&'"]+"""),
        rf"\1{MASK}",
    ),
    # OpenAI-style keys (sk-..., sk-proj-..., sk-ant-...) anywhere.
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), f"sk-{MASK}"),
)


def mask_secrets(text: str) -> str:
    """Mask passwords in URLs and key=value pairs, Authorization headers and API keys found in free text."""
    for pattern, replacement in _SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    return text


# --------------------------------------------------------------------------------------------- logging


class SecretMaskingFilter(logging.Filter):
    """Rewrites a record whose final message or traceback holds a secret; other records are untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a bad format string: the handler reports it the way logging always does
        masked = mask_secrets(message)
        if masked != message:
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            masked_text = mask_secrets(text)
            if masked_text != text:
                record.exc_text = masked_text
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


_MARKER = "_cairn_masks_secrets"


def install_log_masking() -> None:
    """Pass every log record, from every logger, through `mask_secrets`. Calling it again does nothing.

    The filter runs from the log record factory rather than from a logger or a handler: a logger's filter
    misses records propagated from its children, and a handler's filter misses handlers added later
    (pytest's caplog, a file handler set up after start-up).
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, _MARKER, False):
        return
    masking = SecretMaskingFilter()

    def masking_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        masking.filter(record)
        return record

    setattr(masking_factory, _MARKER, True)
    masking_factory.previous = previous  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masking_factory)


def uninstall_log_masking() -> None:
    """Undo `install_log_masking` (for tests); does nothing if it is not installed."""
    current: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    if getattr(current, _MARKER, False):
        logging.setLogRecordFactory(current.previous)  # type: ignore[attr-defined]
