"""The Linux one-dir bundle: built with installer/build_linux.sh (the spec the releases use), then its own self-test.

About 40 s and 220 MB of disk on a 2-core machine; the folders are removed afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux bundle; releases check the others"),
]

# Qt parts Cairn does not use: none of them may reach the bundle.
UNWANTED = re.compile(
    r"Qt6?(Quick|Qml|WebEngine|Pdf|3D|Multimedia|Charts|DataVisualization|Bluetooth|Positioning|Sql|Test|Designer"
    r"|VirtualKeyboard)|/qmltooling/|/sqldrivers/|/designer/|libqpdf|/zstandard/",
    re.IGNORECASE,
)
# ...but the conversation view (message cards) needs Qt Quick and the QML modules its scene imports, no more of qml/
CARDS_VIEW = re.compile(
    r"(^|/)(lib)?Qt6?(Quick|QuickWidgets|QuickControls2(Basic|BasicStyleImpl|Impl)?|QuickTemplates2|Qml|QmlModels"
    r"|QmlMeta|QmlWorkerScript)(\.|$)"
    r"|/qml/(QtQml/((Models|WorkerScript)/)?|QtQuick/((Controls/((Basic/(impl/)?)|impl/)?)|Templates/)?)[^/]+$",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def bundle() -> Iterator[tuple[Path, float]]:
    """(the bundle folder, seconds the build took)."""
    if shutil.which("objdump") is None:
        pytest.fail("PyInstaller needs objdump: apt-get install binutils (scripts/test.sh does)", pytrace=False)
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        message = "PyInstaller is not installed: pip install -e '.[test]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="cairn-bundle-"))
    try:
        env = {**os.environ, "PYTHON": sys.executable, "QT_QPA_PLATFORM": "offscreen"}
        started = time.perf_counter()
        build = subprocess.run(
            [
                "bash",
                str(ROOT / "installer" / "build_linux.sh"),
                "--dist",
                str(base / "dist"),
                "--work",
                str(base / "work"),
                "--no-check",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        seconds = time.perf_counter() - started
        assert build.returncode == 0, f"build failed:\n{build.stdout[-4000:]}\n{build.stderr[-8000:]}"
        yield base / "dist" / "Cairn", seconds
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_bundle_self_test_passes(bundle: tuple[Path, float], tmp_path: Path) -> None:
    folder, build_seconds = bundle
    executable = folder / "Cairn"
    assert executable.is_file() and os.access(executable, os.X_OK)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "POSTGRES_", "MODEL_", "PYTHON"))},
        "QT_QPA_PLATFORM": "offscreen",
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CONFIG_HOME": str(home / ".config"),
    }
    report_file = tmp_path / "report.json"
    started = time.perf_counter()
    result = subprocess.run(
        [str(executable), "self-test", "--json", "--report", str(report_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,
    )
    seconds = time.perf_counter() - started
    assert report_file.is_file(), f"no report (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert result.returncode == 0, (report["failures"], report.get("traceback"), result.stderr[-4000:])
    assert report["ok"] is True
    assert json.loads(result.stdout) == report  # printed as well: on Linux the windowed build keeps its stdout
    assert report["frozen"] is True
    assert Path(report["executable"]) == executable
    assert report["version"] == _pyproject_version()
    assert report["qt"]["platform"] == "offscreen"
    assert {"svg", "ico", "png"} <= set(report["qt"]["image_formats"].split(","))  # the imageformats plugins
    assert next(c for c in report["checks"] if c["name"] == "icon")["ok"] is True  # the SVG icon engine
    assert report["storage"]["active_tier"] == "sqlite"
    assert report["conversation"]["round_trip"] is True
    cards = next(c for c in report["checks"] if c["name"] == "cards view")  # Qt Quick and its QML in the bundle
    assert cards["ok"] is True, cards
    icons = next(c for c in report["checks"] if c["name"] == "cards icons")  # the SVGs and the plugin that reads them
    assert icons["ok"] is True, icons
    # Every keyring backend module and keyring's entry points (its metadata) made it into the bundle.
    assert set(report["keyring"]["backend_modules"].values()) == {"ok"}, report["keyring"]
    assert {"SecretService", "libsecret", "macOS", "Windows"} <= set(report["keyring"]["entry_points"])
    assert not any(home.rglob("*")), "the self-test wrote into the user's home"
    size_mb = _size_mb(folder)
    print(f"\nbundle: built in {build_seconds:.0f} s, {size_mb:.0f} MB; frozen self-test {seconds:.1f} s")


def test_bundle_contents(bundle: tuple[Path, float]) -> None:
    folder, _seconds = bundle
    internal = folder / "_internal"
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    plugins = internal / "PySide6" / "Qt" / "plugins"
    for needed in (
        "platforms/libqoffscreen.so",
        "platforms/libqxcb.so",
        "platforms/libqwayland.so",
        "imageformats/libqsvg.so",
        "imageformats/libqico.so",
        "iconengines/libqsvgicon.so",
    ):
        assert (plugins / needed).is_file(), needed
    for needed in ("cairn.svg", "style.qss", "icons/cairn.ico", "icons/cairn.icns", "icons/cairn-256.png"):
        assert (internal / "resources" / needed).is_file(), needed
    assert (internal / "cairn_version.txt").read_text().strip() == _pyproject_version()
    assert (internal / "gui" / "conversation" / "qml" / "Conversation.qml").is_file()
    qml = internal / "PySide6" / "Qt" / "qml"
    for needed in ("QtQuick/qmldir", "QtQuick/Controls/Basic/qmldir", "QtQuick/Templates/qmldir", "QtQml/qmldir"):
        assert (qml / needed).is_file(), needed
    unwanted = [f for f in files if UNWANTED.search(f) and not CARDS_VIEW.search(f)]
    assert unwanted == [], f"unused Qt parts in the bundle: {unwanted[:20]}"
    assert not any(re.search(r"(^|/)(PIL|pytest|_pytest|tkinter)/", f) for f in files)
    size_mb = _size_mb(folder)
    assert size_mb < 260, f"the bundle grew to {size_mb:.0f} MB"


def _size_mb(folder: Path) -> float:
    """What the folder takes (PyInstaller links some libraries to the top folder: symlinks count nothing)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
