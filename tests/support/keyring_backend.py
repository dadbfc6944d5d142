"""An in-memory keyring backend for tests, and fixtures that install it (or the "no keyring" backend); a file-backed
one for a command run as a subprocess (``PYTHON_KEYRING_BACKEND=tests.support.keyring_backend.FileKeyring``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.errors
import pytest


class MemoryKeyring(keyring.backend.KeyringBackend):
    """Keeps passwords in a dict, so tests can see exactly what reached "the keyring"."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        try:
            del self.passwords[(service, username)]
        except KeyError:
            raise keyring.errors.PasswordDeleteError(username) from None


class FileKeyring(keyring.backend.KeyringBackend):
    """Keeps passwords in the JSON file named by ``$CAIRN_TEST_KEYRING`` (``"service\nusername": password``): a
    keyring a test can fill before it runs a command in another process, where no desktop keyring exists."""

    priority = 1
    FILE_ENV = "CAIRN_TEST_KEYRING"

    @classmethod
    def write(cls, path: Path, passwords: dict[tuple[str, str], str]) -> None:
        path.write_text(json.dumps({f"{service}\n{user}": secret for (service, user), secret in passwords.items()}))

    def _read(self) -> dict[str, str]:
        path = Path(os.environ[self.FILE_ENV])
        return json.loads(path.read_text()) if path.exists() else {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._read().get(f"{service}\n{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._read()
        data[f"{service}\n{username}"] = password
        Path(os.environ[self.FILE_ENV]).write_text(json.dumps(data))

    def delete_password(self, service: str, username: str) -> None:
        data = self._read()
        if data.pop(f"{service}\n{username}", None) is None:
            raise keyring.errors.PasswordDeleteError(username)
        Path(os.environ[self.FILE_ENV]).write_text(json.dumps(data))


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    """Install a fresh MemoryKeyring as the active backend; the previous backend is restored afterwards."""
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
def no_keyring() -> Iterator[keyring.backend.KeyringBackend]:
    """Install keyring's "fail" backend, what a machine with no desktop session has; restored afterwards."""
    previous = keyring.get_keyring()
    backend = keyring.backends.fail.Keyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)
