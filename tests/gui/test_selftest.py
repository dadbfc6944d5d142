"""`python main.py self-test`: run as a user would, in a subprocess, on a machine whose own dirs must stay untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


@pytest.fixture
def user_home(tmp_path: Path) -> dict[str, Path]:
    """Where "the user's" data, settings and working dir are: the self-test must leave all of them untouched."""
    dirs = {name: tmp_path / name for name in ("home", "data", "config", "xdg_data", "xdg_config", "cwd")}
    for path in dirs.values():
        path.mkdir()
    # A .env and settings that point at a Postgres server: the self-test must not read them (nor connect).
    (dirs["cwd"] / ".env").write_text("POSTGRES_DATABASE_URL=postgresql://nobody:pw@127.0.0.1:9/none\n")
    (dirs["config"] / "settings.json").write_text('{"MODEL_BASE_URL": "http://127.0.0.1:9/v1"}\n')
    return dirs


def selftest_env(user_home: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "POSTGRES_", "MODEL_"))}
    env.update(
        QT_QPA_PLATFORM="offscreen",
        HOME=str(user_home["home"]),
        XDG_DATA_HOME=str(user_home["xdg_data"]),
        XDG_CONFIG_HOME=str(user_home["xdg_config"]),
        CAIRN_DATA_DIR=str(user_home["data"]),
        CAIRN_CONFIG_DIR=str(user_home["config"]),
        POSTGRES_DATABASE_URL="postgresql://nobody:pw@127.0.0.1:9/none",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",  # the same answer on every machine
        PYTHONPATH=str(ROOT),  # lets PYTHON_KEYRING_BACKEND name the test backend below
    )
    env.update(extra)
    return env


def run_selftest(
    user_home: dict[str, Path], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "self-test", *args],
        cwd=user_home["cwd"],
        env=env or selftest_env(user_home),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
    )


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"not JSON (exit {result.returncode}):\n{result.stdout}\n--- stderr ---\n{result.stderr}")


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def untouched(user_home: dict[str, Path]) -> dict[str, list[str]]:
    """What exists in the user's dirs (besides what the fixture put there)."""
    seeded = {user_home["cwd"] / ".env", user_home["config"] / "settings.json"}
    return {
        name: sorted(str(p.relative_to(path)) for p in path.rglob("*") if p not in seeded)
        for name, path in user_home.items()
    }


def test_selftest_passes_and_reports(user_home: dict[str, Path], tmp_path: Path) -> None:
    report_file = tmp_path / "out" / "report.json"
    result = run_selftest(user_home, "--json", "--report", str(report_file))
    report = report_of(result)
    assert result.returncode == 0, (report["failures"], result.stderr)
    assert report["ok"] is True and report["failures"] == []
    assert report["frozen"] is False
    assert report["version"] == _pyproject_version()
    assert report["qt"]["platform"] == "offscreen"
    # The tier is SQLite in a temporary data dir: neither the user's data dir nor the .env's Postgres URL was used.
    assert report["storage"]["active_tier"] == "sqlite"
    assert report["storage"]["active_tier_after_restart"] == "sqlite"
    assert report["storage"]["tiers"]["postgres"] == "off"
    assert Path(report["storage"]["data_dir"]).is_relative_to(report["temp_dir"])
    # The keyring is reported (here: none, forced), and that is not a failure.
    assert report["keyring"]["backend"] == "memory (this session only)"
    assert report["keyring"]["persistent"] is False
    assert report["keyring"]["active"] == "keyring.backends.fail.Keyring"
    assert check(report, "keyring")["ok"] is True
    assert set(report["keyring"]["backend_modules"]) >= {"SecretService", "macOS", "Windows"}
    # The conversation went through the model server, the graph and SQLite, and came back after a restart.
    conversation = report["conversation"]
    assert conversation["round_trip"] is True
    assert conversation["messages_written"] == conversation["messages_read"] == 2
    assert conversation["title"] == conversation["title_after_restart"]
    assert conversation["title"].startswith("Cairn self-test ✓")
    names = [c["name"] for c in report["checks"]]
    assert names == ["keyring", "window", "icon", "storage", "reply", "list", "cards view", "cards icons", "round trip"]
    assert all(c["ok"] for c in report["checks"])
    assert report["timings_ms"]["total"] > 0
    # --report FILE holds the same report (a windowed app on Windows has no console to print to).
    assert json.loads(report_file.read_text(encoding="utf-8")) == report
    # Nothing was left behind: the temporary folder is gone and the user's folders hold only what they held.
    assert report["kept"] is False and not Path(report["temp_dir"]).exists()
    assert untouched(user_home) == {name: [] for name in user_home}


def test_selftest_text_report(user_home: dict[str, Path]) -> None:
    result = run_selftest(user_home)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Cairn self-test: OK (")
    assert any(line.startswith("  keyring   memory (this session only)") for line in lines)
    assert "  storage   active tier sqlite in " in result.stdout
    assert "[ok  ] round trip: 2 messages and the title read back after a restart" in result.stdout


def test_unusable_data_dir_fails_with_the_reason(user_home: dict[str, Path], tmp_path: Path) -> None:
    """Nothing durable works (the data dir is a file): the app falls back to memory, which the self-test fails."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    result = run_selftest(user_home, "--json", "--data-dir", str(blocker))
    report = report_of(result)
    assert result.returncode == 1
    assert report["ok"] is False
    assert report["storage"]["active_tier"] == "memory"
    storage = check(report, "storage")
    assert storage["ok"] is False
    assert "nothing would be saved" in storage["detail"] and "FileExistsError" in storage["detail"]
    # It still answered (memory works for the session) but nothing survived the restart.
    assert check(report, "reply")["ok"] is True
    assert check(report, "round trip") == {
        "name": "round trip",
        "ok": False,
        "detail": "the conversation is gone after a restart",
    }
    assert [f.split(":")[0] for f in report["failures"]] == ["storage", "round trip"]
    assert blocker.read_text() == "a file where the data folder should be"


def test_require_keyring_fails_without_one(user_home: dict[str, Path]) -> None:
    result = run_selftest(user_home, "--json", "--require-keyring")
    report = report_of(result)
    assert result.returncode == 1
    assert report["failures"] == [f"keyring: {report['keyring']['warning']}"]
    assert "No OS keyring is available" in report["keyring"]["warning"]


def test_keyring_roundtrip_with_a_working_backend(user_home: dict[str, Path]) -> None:
    env = selftest_env(user_home, PYTHON_KEYRING_BACKEND="tests.support.keyring_backend.MemoryKeyring")
    result = run_selftest(user_home, "--json", "--require-keyring", "--keyring-roundtrip", env=env)
    report = report_of(result)
    assert result.returncode == 0, report["failures"]
    assert report["keyring"]["backend"] == "tests.support.keyring_backend.MemoryKeyring"
    assert report["keyring"]["persistent"] is True
    assert report["keyring"]["roundtrip"] == "ok"
    assert check(report, "keyring round trip") == {
        "name": "keyring round trip",
        "ok": True,
        "detail": "stored, read back and deleted",
    }


def test_keep_leaves_the_database_for_inspection(user_home: dict[str, Path]) -> None:
    result = run_selftest(user_home, "--json", "--keep")
    report = report_of(result)
    try:
        assert result.returncode == 0, report["failures"]
        assert report["kept"] is True
        assert (Path(report["temp_dir"]) / "data" / "cairn.sqlite").is_file()
        assert (Path(report["temp_dir"]) / "config" / "window.ini").is_file()
    finally:
        import shutil

        shutil.rmtree(report["temp_dir"], ignore_errors=True)


def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
