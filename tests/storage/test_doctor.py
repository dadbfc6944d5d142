"""`python main.py doctor`: the settings and tiers, answered within the connect timeout, secrets masked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.netproxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]


def run_doctor(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "CAIRN_", "USE_POSTGRES", "PREFER_"))
    }
    environ.update(CAIRN_DATA_DIR=str(tmp_path / "data"), CAIRN_CONFIG_DIR=str(tmp_path / "config"), **env)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "doctor", *args],
        cwd=tmp_path,  # no stray .env from the repository
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - start


def test_doctor_json_without_postgres_reports_sqlite(tmp_path: Path) -> None:
    result, _ = run_doctor(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["active_tier"] == "sqlite"
    assert report["tiers"]["postgres"]["state"] == "off"
    assert "no Postgres URL" in report["tiers"]["postgres"]["reason"]
    assert report["tiers"]["sqlite"]["state"] == "active"
    assert report["pending_sync"] == 0
    assert (tmp_path / "data" / "cairn.sqlite").exists()


def test_doctor_answers_within_connect_timeout_when_host_never_answers(tmp_path: Path, pg_cluster: Any) -> None:
    with TcpProxy(pg_cluster.host, pg_cluster.port) as proxy:
        proxy.blackhole()
        url = proxy.url_for(pg_cluster.url(user="cairn_pw", password="s3cret-in-url"))
        result, took = run_doctor(tmp_path, "--json", POSTGRES_DATABASE_URL=url, POSTGRES_CONNECT_TIMEOUT="2")
    assert result.returncode == 0, result.stderr
    assert took <= 2 + 1, f"doctor took {took:.2f} s with connect_timeout 2 s"
    report = json.loads(result.stdout)
    assert report["active_tier"] == "sqlite"
    assert report["tiers"]["postgres"]["state"] == "down"
    assert "timeout" in report["tiers"]["postgres"]["reason"].lower()
    assert "s3cret-in-url" not in result.stdout + result.stderr


def test_doctor_text_shows_tiers_and_masks_password(tmp_path: Path, pg_cluster: Any) -> None:
    from tests.support.pgcluster import PW_PASSWORD

    url = pg_cluster.create_database(owner="cairn_pw")
    assert PW_PASSWORD in url  # the URL carries the password, as a user might paste it
    result, _ = run_doctor(tmp_path, POSTGRES_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert "Active tier:   postgres" in result.stdout
    assert PW_PASSWORD not in result.stdout + result.stderr
    assert "***" in result.stdout or "cairn_pw@" in result.stdout
    for tier in ("postgres", "sqlite", "memory"):
        assert f"\n  {tier}" in result.stdout


def test_doctor_says_whether_changes_from_other_devices_arrive_live(pg_url: str, tmp_path: Path) -> None:
    result, _ = run_doctor(tmp_path, "--json", POSTGRES_DATABASE_URL=pg_url)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["tiers"]["postgres"]["detail"]["live"] == "listening", data["tiers"]["postgres"]
