"""`python main.py doctor` on the model server: reachable, models listed, the chosen model there, the key accepted.

The real command in a subprocess against the real test model server; the API key comes from a keyring file the
subprocess reads (tests.support.keyring_backend.FileKeyring), as the app would find it in the OS keyring.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.endpoints import api_key_name
from storage.secrets import DEFAULT_SERVICE
from tests.support.keyring_backend import FileKeyring
from tests.support.model_server import ModelServer
from tests.support.netproxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-doctor-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(api_key=KEY) as model_server:
        yield model_server


def run_doctor(
    tmp_path: Path, *args: str, key: str | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTGRES_", "CAIRN_", "USE_POSTGRES", "PREFER_", "MODEL_", "PYTHON_KEYRING"))
    }
    keyring_file = tmp_path / "keyring.json"
    if key is not None:
        FileKeyring.write(keyring_file, {(DEFAULT_SERVICE, api_key_name(env["MODEL_BASE_URL"])): key})
    environ.update(
        CAIRN_DATA_DIR=str(tmp_path / "data"),
        CAIRN_CONFIG_DIR=str(tmp_path / "config"),
        PYTHON_KEYRING_BACKEND="tests.support.keyring_backend.FileKeyring",
        PYTHONPATH=str(ROOT),  # lets PYTHON_KEYRING_BACKEND name the test backend
        CAIRN_TEST_KEYRING=str(keyring_file),
        **env,
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "doctor", *args],
        cwd=tmp_path,  # no stray .env from the repository
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result, time.monotonic() - start


def section(text: str) -> str:
    return text[text.index("Model server:") :]


def test_doctor_reports_a_model_server_that_answers_with_the_chosen_model_and_accepts_the_key(
    tmp_path: Path, server: ModelServer
) -> None:
    env = {"MODEL_BASE_URL": server.base_url, "MODEL_NAME": "other-model", "MODEL_FIRST_TOKEN_TIMEOUT": "240"}
    result, _ = run_doctor(tmp_path, key=KEY, **env)
    text = section(result.stdout)
    assert f"Model server:  {server.base_url}" in text
    assert "reachable  ok      yes" in text
    assert "models     ok      2 listed: test-model, other-model" in text
    assert "model      ok      other-model: on the server" in text
    assert "API key    ok      accepted" in text
    assert "240 s for the first token, 60 s between tokens" in text
    assert KEY not in result.stdout + result.stderr

    result, _ = run_doctor(tmp_path, "--json", key=KEY, **env)
    report: dict[str, Any] = json.loads(result.stdout)["model_server"]
    assert report["ok"] is True
    assert report["models_listed"] == ["test-model", "other-model"]
    assert report["api_key"] == {"ok": True, "words": "accepted"}
    assert (report["first_token_timeout"], report["token_timeout"]) == (240.0, 60.0)


@pytest.mark.parametrize("key", ["sk-wrong-key-0000", None], ids=["wrong key", "no key"])
def test_doctor_says_the_server_refused_the_api_key(tmp_path: Path, server: ModelServer, key: str | None) -> None:
    result, _ = run_doctor(tmp_path, "--json", key=key, MODEL_BASE_URL=server.base_url)
    report = json.loads(result.stdout)["model_server"]
    assert report["ok"] is False
    assert report["reachable"]["ok"] is True
    assert report["api_key"]["ok"] is False
    # The settings dialog's words for the same answer (tests/gui/test_settings_dialog.py).
    assert report["api_key"]["words"].startswith("The server refused the API key (HTTP 401)")
    assert ("No key is set" in report["api_key"]["words"]) is (key is None)
    assert "sk-wrong-key-0000" not in result.stdout + result.stderr


def test_doctor_says_the_chosen_model_is_not_on_the_server(tmp_path: Path, server: ModelServer) -> None:
    result, _ = run_doctor(tmp_path, key=KEY, MODEL_BASE_URL=server.base_url, MODEL_NAME="no-such-model")
    text = section(result.stdout)
    assert "models     ok      2 listed" in text
    assert "model      FAILED  The model was not found on the server: no-such-model" in text


def test_doctor_with_no_model_chosen_names_the_one_the_app_uses(tmp_path: Path) -> None:
    with ModelServer(["zeta-main", "alpha-other"]) as server:
        result, _ = run_doctor(tmp_path, MODEL_BASE_URL=server.base_url)
    text = section(result.stdout)
    assert "none chosen: the server's first, zeta-main, is used" in text  # the server's order, as the app picks
    assert "API key    ok      none set; the server asks for none" in text


def test_doctor_says_nothing_answers_in_the_window_s_words(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result, _ = run_doctor(tmp_path, "--json", MODEL_BASE_URL=f"http://127.0.0.1:{port}/v1")
    report = json.loads(result.stdout)["model_server"]
    assert report["reachable"]["ok"] is False
    # chat.errors' words for a refused connection, which the window shows under a failed reply.
    assert report["reachable"]["words"].startswith(f"Cannot reach the model server at 127.0.0.1:{port} — is the server")
    assert report["models"] == {"ok": None, "words": "not checked"}


def test_doctor_answers_within_the_connect_timeout_when_the_model_server_never_answers(
    tmp_path: Path, server: ModelServer
) -> None:
    with TcpProxy("127.0.0.1", server.port) as proxy:
        proxy.blackhole()
        env = {"MODEL_BASE_URL": f"http://127.0.0.1:{proxy.port}/v1", "POSTGRES_CONNECT_TIMEOUT": "2"}
        result, took = run_doctor(tmp_path, "--json", **env)
    assert took <= 2 + 1, f"doctor took {took:.2f} s with connect_timeout 2 s"
    report = json.loads(result.stdout)["model_server"]
    assert report["reachable"]["ok"] is False
    assert report["reachable"]["words"].startswith("No answer from")
