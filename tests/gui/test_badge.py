"""gui/badge.py, gui/bridge.py, gui/storage_dialog.py on a real StorageManager and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QDialog

import storage.manager
from gui.badge import AMBER, CALM, GREEN, RED, TIER_LOOKS, StatusBadge
from gui.bridge import StorageBridge
from gui.storage_dialog import MemoryBanner, StorageDetailsDialog
from storage.doctor import report_text
from storage.secrets import SecretStore
from storage.settings import load_settings
from storage.status import INVALID_URL, NOT_CONFIGURED, SWITCHED_OFF, StorageStatus, TierEvent, TierStatus
from tests.support.qt import wait_signal


def contrast(a: QColor, b: QColor) -> float:
    """WCAG contrast ratio of two colours."""

    def luminance(c: QColor) -> float:
        def channel(v: float) -> float:
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

        return 0.2126 * channel(c.redF()) + 0.7152 * channel(c.greenF()) + 0.0722 * channel(c.blueF())

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def assert_readable(badge: StatusBadge) -> None:
    background, text = badge.colors()
    assert contrast(background, text) >= 4.5, (background.name(), text.name())


async def one_turn(saver: Any, thread_id: str) -> None:
    from tests.support.chatgraph import build_graph, turn

    await turn(build_graph(saver), thread_id, "hello")


def status_on(tier: str) -> StorageStatus:
    """A status (plain data) with ``tier`` active, for drawing tests that need no storage behind them."""
    tiers = {name: TierStatus("active" if name == tier else "standby") for name in ("postgres", "sqlite", "memory")}
    if tier != "postgres":
        tiers["postgres"] = TierStatus("off")  # no server set up
    return StorageStatus(tier, tiers, pending_sync=0, postgres_url="", data_dir="/d")  # type: ignore[arg-type]


def dominant_colour(badge: StatusBadge) -> QColor:
    """The colour most of the badge is painted in, as it renders."""
    image = badge.grab().toImage()
    counts = Counter(image.pixel(x, y) for x in range(image.width()) for y in range(image.height()))
    return QColor(counts.most_common(1)[0][0])


def pending_text(status: StorageStatus) -> str:
    return f"On this computer · {status.pending_sync} waiting to sync"


TECHNICAL_WORDS = ("Error", "Exception", "retry_in", "checkpoint", "pool", "sqlstate", "psycopg")


def assert_plain(text: str) -> None:
    """Words for people: no exception class, no retry timer, no checkpoints or pool statistics."""
    found = [word for word in TECHNICAL_WORDS if word.lower() in text.lower()]
    assert not found, (found, text)


# --------------------------------------------------------------------------------------------- the badge


async def test_badge_says_local_without_a_postgres_url(tmp_path: Path, open_storage: Any, qtbot: Any) -> None:
    storage = await open_storage(tmp_path / "data")
    bridge = StorageBridge(storage.manager)
    badge = StatusBadge(bridge)
    qtbot.addWidget(badge)

    assert badge.text() == "Saved on this computer"
    tooltip = badge.toolTip()
    assert tooltip.startswith("Saved on this computer\nNo server is set up")
    assert str(tmp_path / "data") in tooltip
    assert_plain(tooltip)
    assert badge.accessibleName() == "Storage: Saved on this computer"
    assert badge.accessibleDescription() == tooltip
    # The normal state of a computer without a server: a calm colour, not the warning amber.
    assert badge.colors()[0] == QColor(TIER_LOOKS["sqlite"].background) == QColor(CALM[0])
    assert badge.colors()[0] != QColor(AMBER[0])
    assert_readable(badge)


async def test_badge_click_asks_for_details(tmp_path: Path, open_storage: Any, qtbot: Any) -> None:
    storage = await open_storage(tmp_path / "data")
    badge = StatusBadge(StorageBridge(storage.manager))
    qtbot.addWidget(badge)
    asked: list[bool] = []
    badge.detailsRequested.connect(lambda: asked.append(True))

    qtbot.mouseClick(badge, Qt.MouseButton.LeftButton)
    badge.setFocus()
    qtbot.keyClick(badge, Qt.Key.Key_Space)

    assert asked == [True, True]


URL = "postgresql://me:***@db.example.com:5432/cairn"  # as the manager gives it: masked


def status_of(
    active: str, postgres: TierStatus, *, pending: int = 0, sqlite: TierStatus | None = None
) -> StorageStatus:
    """A status (plain data) in one of the states the manager produces (tests/storage/test_tiers.py drives them for
    real)."""
    tiers = {"postgres": postgres, "sqlite": sqlite or TierStatus("active"), "memory": TierStatus("standby")}
    url = "" if postgres.state == "off" and not postgres.cause.startswith("The server address") else URL
    return StorageStatus(active, tiers, pending_sync=pending, postgres_url=url, data_dir="/d")  # type: ignore[arg-type]


REFUSED = TierStatus(
    "down", "OperationalError: ... Connection refused", {"retry_in": 0.5}, "Can't reach the server: connection refused"
)
DISK_FULL = TierStatus("failed", "OperationalError: database or disk is full", cause="the disk is full")


@pytest.mark.parametrize(
    ("status", "words", "colour", "cause"),
    [
        (
            status_of("sqlite", TierStatus("off", "no Postgres URL is configured", cause=NOT_CONFIGURED)),
            "Saved on this computer",
            CALM,
            NOT_CONFIGURED,
        ),
        (
            status_of(
                "sqlite",
                TierStatus("off", "Postgres is switched off (USE_POSTGRES_CHECKPOINTER=false)", cause=SWITCHED_OFF),
            ),
            "Saved on this computer",
            CALM,
            SWITCHED_OFF,
        ),
        (
            status_of(
                "sqlite", TierStatus("off", "POSTGRES_DATABASE_URL is not a valid Postgres URL: ...", cause=INVALID_URL)
            ),
            "On this computer · not synced",
            AMBER,
            INVALID_URL,
        ),
        (
            status_of("sqlite", TierStatus("connecting", "connecting to ...", cause="Connecting to the server")),
            "On this computer · connecting…",
            CALM,
            "Connecting to the server",
        ),
        (
            status_of(
                "sqlite", TierStatus("connecting", "connecting to ...", cause="Connecting to the server"), pending=2
            ),
            "On this computer · 2 waiting to sync",
            CALM,
            "Connecting to the server",
        ),
        (
            status_of("sqlite", REFUSED),
            "On this computer · not synced",
            AMBER,
            "Can't reach the server: connection refused",
        ),
        (status_of("sqlite", REFUSED, pending=3), "On this computer · 3 waiting to sync", AMBER, REFUSED.cause),
        (
            status_of(
                "sqlite",
                TierStatus("failed", "UndefinedColumn: ...", cause="Cairn could not set up its tables on the server"),
            ),
            "On this computer · not synced",
            AMBER,
            "Cairn could not set up its tables on the server",
        ),
        (status_of("postgres", TierStatus("connected")), "Synced · db.example.com", GREEN, ""),
        (status_of("postgres", TierStatus("connected"), pending=3), "Syncing 3 · db.example.com", GREEN, ""),
        (
            status_of("postgres", TierStatus("connected"), sqlite=DISK_FULL),
            "Only on the server · db.example.com",
            AMBER,
            "This computer's copy can't be written: the disk is full",
        ),
        (
            status_of("memory", REFUSED, sqlite=DISK_FULL),
            "Not saved",
            RED,
            "This computer's copy can't be written: the disk is full. Can't reach the server: connection refused",
        ),
    ],
)
def test_badge_words_for_every_state(
    status: StorageStatus, words: str, colour: tuple[str, str], cause: str, qtbot: Any
) -> None:
    badge = StatusBadge()
    qtbot.addWidget(badge)
    badge.show_status(status)
    assert badge.text() == words
    assert badge.colors() == (QColor(colour[0]), QColor(colour[1]))
    assert status.cause == cause
    if cause:
        assert f"{cause}." in badge.toolTip()
    assert_plain(badge.toolTip())
    assert "***" not in badge.toolTip() + badge.text()  # the host, never the URL's password (masked or not)
    assert_readable(badge)


@pytest.mark.parametrize("tier", ["postgres", "sqlite", "memory"])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_badge_colours_are_readable_in_light_and_dark_palettes(qtbot: Any, tier: str, scheme: str) -> None:
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    previous = app.palette()
    palette = QPalette(previous)
    window, text = ("#ffffff", "#000000") if scheme == "light" else ("#1e1e1e", "#f0f0f0")
    for role, colour in (
        (QPalette.ColorRole.Window, window),
        (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Button, window),
        (QPalette.ColorRole.ButtonText, text),
    ):
        palette.setColor(role, QColor(colour))
    app.setPalette(palette)
    try:
        badge = StatusBadge()
        qtbot.addWidget(badge)
        badge.show_status(status_on(tier))
        badge.ensurePolished()
        look = TIER_LOOKS[tier]  # type: ignore[index]
        # The badge draws its own colours whatever the palette says, and each pair is readable.
        assert dominant_colour(badge) == QColor(look.background)
        assert contrast(QColor(look.background), QColor(look.foreground)) >= 4.5
        assert_readable(badge)
        # The badge must stand out from the window around it too.
        assert contrast(QColor(look.background), QColor(window)) >= 1.4
    finally:
        app.setPalette(previous)


async def test_badge_follows_postgres_going_down_and_coming_back(
    tmp_path: Path, open_storage: Any, pg_cluster: Any, pg_url: str, qtbot: Any
) -> None:
    if not pg_cluster.controllable:
        pytest.skip("needs a PostgreSQL server the tests can stop")
    storage = await open_storage(tmp_path / "data", pg_url, connect_timeout=2.0, retry_max_seconds=0.5)
    bridge = StorageBridge(storage.manager)
    badge = StatusBadge(bridge)
    qtbot.addWidget(badge)
    events: list[TierEvent] = []
    bridge.tierChanged.connect(events.append)
    host = pg_cluster.host
    assert badge.text() == f"Synced · {host}"
    assert badge.colors()[0] == QColor(TIER_LOOKS["postgres"].background)

    pg_cluster.stop()
    # A turn lands in SQLite at once; the sync that follows finds Postgres gone.
    await one_turn(storage.saver, "t-down")
    down = await wait_signal(
        bridge.statusChanged,
        20,
        lambda s: s.active_tier == "sqlite" and s.pending_sync > 0,
        already=lambda: (s := bridge.status()).active_tier == "sqlite" and s.pending_sync > 0 and s,
    )
    assert down.reason
    shown = badge.status()
    assert shown is not None and shown.active_tier == "sqlite"
    assert badge.text() == pending_text(shown)
    # The cause it shows is the latest one, in plain words (the monitor keeps retrying; the words follow).
    assert f"{shown.cause}." in badge.toolTip()
    assert shown.cause == bridge.status().cause
    assert shown.cause.startswith("Can't reach the server"), shown.cause
    assert f"not on {host}" in badge.toolTip()
    assert_plain(badge.toolTip())
    assert badge.colors()[0] == QColor(AMBER[0])  # a server is set up and away: a warning
    assert [(e.previous, e.current) for e in events] == [("postgres", "sqlite")]
    assert events[0].reason

    pg_cluster.start()
    await wait_signal(
        bridge.statusChanged,
        30,
        lambda s: s.active_tier == "postgres" and s.pending_sync == 0,
        already=lambda: (s := bridge.status()).active_tier == "postgres" and s.pending_sync == 0,
    )
    assert badge.text() == f"Synced · {host}"
    assert badge.toolTip().startswith(f"Saved on this computer and on {host}")
    assert badge.colors()[0] == QColor(GREEN[0])
    assert [(e.previous, e.current) for e in events] == [("postgres", "sqlite"), ("sqlite", "postgres")]


async def test_memory_tier_turns_the_badge_red_and_shows_the_banner(open_storage: Any, qtbot: Any) -> None:
    storage = await open_storage(None)  # no data folder: nothing durable works
    bridge = StorageBridge(storage.manager)
    badge = StatusBadge(bridge)
    banner = MemoryBanner(bridge)
    qtbot.addWidget(badge)
    qtbot.addWidget(banner)
    exports: list[bool] = []
    banner.exportRequested.connect(lambda: exports.append(True))

    assert badge.text() == "Not saved"
    assert badge.colors()[0] == QColor(TIER_LOOKS["memory"].background)
    assert_readable(badge)
    assert "Nothing is being saved" in badge.toolTip()
    assert not banner.isHidden()
    assert (
        banner.message.text() == "Nothing is being saved. This computer's copy can't be written: no data folder is set."
    )
    qtbot.mouseClick(banner.export_button, Qt.MouseButton.LeftButton)
    assert exports == [True]


async def test_banner_stays_hidden_while_words_are_saved(tmp_path: Path, open_storage: Any, qtbot: Any) -> None:
    storage = await open_storage(tmp_path / "data")
    banner = MemoryBanner(StorageBridge(storage.manager))
    qtbot.addWidget(banner)
    assert banner.isHidden()
    # The same banner appears the moment the tier becomes memory, and goes when it recovers.
    memory = StorageStatus("memory", storage.manager.status().tiers, 0, "", "")
    banner.show_status(memory)
    assert not banner.isHidden()
    banner.show_status(storage.manager.status())
    assert banner.isHidden()


# --------------------------------------------------------------------------------------------- the bridge


async def test_bridge_delivers_on_the_gui_thread_when_called_from_another(
    tmp_path: Path, open_storage: Any, qtbot: Any
) -> None:
    storage = await open_storage(tmp_path / "data")
    bridge = StorageBridge(storage.manager)
    seen: list[tuple[StorageStatus, bool]] = []
    bridge.statusChanged.connect(lambda s: seen.append((s, threading.current_thread() is threading.main_thread())))
    status = storage.manager.status()
    worker = threading.Thread(target=bridge._on_storage, args=(status, None))
    worker.start()
    await asyncio.to_thread(worker.join)

    got = await wait_signal(bridge.statusChanged, 5, already=lambda: seen and seen[0][0])
    assert got is status
    assert seen == [(status, True)]


async def test_bridge_stops_listening_when_closed_or_deleted(
    tmp_path: Path, open_storage: Any, qtbot: Any, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await open_storage(tmp_path / "data")
    manager = storage.manager
    live, closed, doomed = StorageBridge(manager), StorageBridge(manager), StorageBridge(manager)
    heard: dict[str, int] = {"live": 0, "closed": 0}
    live.statusChanged.connect(lambda _s: heard.__setitem__("live", heard["live"] + 1))
    closed.statusChanged.connect(lambda _s: heard.__setitem__("closed", heard["closed"] + 1))
    closed.close()
    closed.close()  # twice is fine
    doomed.deleteLater()
    await wait_signal(doomed.destroyed, 5)

    await manager.update_conversation("t-1", title="renamed")  # the manager tells its listeners

    assert heard == {"live": 1, "closed": 0}
    assert not closed.listening and live.listening
    assert "storage listener failed" not in caplog.text  # the deleted bridge was no longer called


# --------------------------------------------------------------------------------------------- details dialog


async def test_details_show_the_doctor_report_and_retry_now_reconnects(
    tmp_path: Path,
    open_storage: Any,
    pg_proxy: Any,
    pg_url: str,
    qtbot: Any,
    monkeypatch: pytest.MonkeyPatch,
    memory_keyring: Any,
) -> None:
    # A minute between attempts: only "Retry now" can bring Postgres back within this test's bound.
    monkeypatch.setattr(storage.manager, "FIRST_RETRY_SECONDS", 60.0)
    pg_proxy.refuse()
    store = await open_storage(tmp_path / "data", pg_proxy.url_for(pg_url), retry_max_seconds=60.0)
    bridge = StorageBridge(store.manager)
    settings = load_settings(environ={}, cwd=tmp_path, config_dir=tmp_path / "config")
    secrets = SecretStore()
    dialog = StorageDetailsDialog(bridge, settings, secrets)
    qtbot.addWidget(dialog)

    status = bridge.status()
    assert status.tiers["postgres"].state == "down"
    assert dialog.report.toPlainText() == report_text(settings, secrets, status)
    assert dialog.tiers.item(0, 1).text() == "down"
    assert "refused" in dialog.tiers.item(0, 2).text().lower()
    assert dialog.headline().startswith("Saved on this computer only, not on 127.0.0.1\n")
    assert "Can't reach the server: connection refused." in dialog.headline()
    assert_plain(dialog.headline())
    assert dialog.keyring.text() == "tests.support.keyring_backend.MemoryKeyring"
    assert dialog.retry_button.isEnabled()

    pg_proxy.pass_through()
    qtbot.mouseClick(dialog.retry_button, Qt.MouseButton.LeftButton)
    assert dialog.retry_note.text() == "Trying Postgres again…"
    back = await wait_signal(bridge.statusChanged, 10, lambda s: s.active_tier == "postgres")

    assert dialog.status() is not None and dialog.status().active_tier == "postgres"
    assert dialog.tiers.item(0, 1).text() == "connected"
    assert "mode: async" in dialog.tiers.item(0, 2).text()
    assert dialog.headline() == "Saved on this computer and on 127.0.0.1"
    assert dialog.report.toPlainText() == report_text(settings, secrets, dialog.status())
    assert back.tiers["postgres"].state == "connected"


async def test_details_without_postgres_cannot_retry(tmp_path: Path, open_storage: Any, qtbot: Any) -> None:
    store = await open_storage(tmp_path / "data")
    dialog = StorageDetailsDialog(StorageBridge(store.manager))
    qtbot.addWidget(dialog)
    assert not dialog.retry_button.isEnabled()
    assert dialog.tiers.item(0, 1).text() == "off"
    assert "Active tier:   sqlite" in dialog.report.toPlainText()
    qtbot.mouseClick(dialog.copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == dialog.report.toPlainText()
    dialog.reject()
    assert dialog.result() == QDialog.DialogCode.Rejected


async def _no_such_database(pg_cluster: Any, url: str) -> Any:
    """Postgres refuses the login: the URL names a database the server does not have (yet)."""
    pg_cluster.drop_database(url)
    dbname = conninfo_to_dict(url)["dbname"]

    async def fix() -> None:
        async with await psycopg.AsyncConnection.connect(pg_cluster.url(), autocommit=True) as conn:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))

    return fix


async def _incompatible_table(url: str) -> Any:
    """Setup fails for a reason that is not the environment's: a table of another shape where Cairn's goes."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE cairn_migrations (version_text TEXT)")

    async def fix() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("DROP TABLE cairn_migrations")

    return fix


@pytest.mark.parametrize(
    ("case", "state"),
    [
        ("connecting", "connecting"),
        ("no such database", "down"),
        ("no CREATE permission", "down"),
        ("incompatible table", "failed"),
    ],
)
async def test_retry_now_tries_at_once_in_every_state(
    case: str,
    state: str,
    tmp_path: Path,
    open_storage: Any,
    pg_cluster: Any,
    request: pytest.FixtureRequest,
    qtbot: Any,
) -> None:
    """Retry now is offered whatever the state of a configured Postgres, and tries at once: the slow cadence of a
    refusal (a minute) and "failed" (no retry on a timer) are both longer than this test's bound."""
    url = request.getfixturevalue("limited_url" if case == "no CREATE permission" else "pg_url")
    fix: Any = None
    proxy = None
    if case == "connecting":
        proxy = request.getfixturevalue("pg_proxy")
        proxy.blackhole()  # the first attempt waits for an answer: "connecting" for the connect timeout
        url = proxy.url_for(url)
    elif case == "no such database":
        fix = await _no_such_database(pg_cluster, url)
    elif case == "no CREATE permission":
        params = conninfo_to_dict(url)

        async def fix() -> None:
            async with await psycopg.AsyncConnection.connect(pg_cluster.url(params["dbname"]), autocommit=True) as c:
                await c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(params["user"])))

    else:
        fix = await _incompatible_table(url)
    store = await open_storage(tmp_path / "data", url, connect_timeout=3.0, wait=case != "connecting")
    bridge = StorageBridge(store.manager)
    dialog = StorageDetailsDialog(bridge)
    qtbot.addWidget(dialog)
    assert dialog.tiers.item(0, 1).text() == state
    assert dialog.retry_button.isEnabled(), dialog.retry_button.toolTip()

    if proxy is not None:
        qtbot.mouseClick(dialog.retry_button, Qt.MouseButton.LeftButton)  # while the attempt is under way
        proxy.pass_through()
    else:
        await fix()
        qtbot.mouseClick(dialog.retry_button, Qt.MouseButton.LeftButton)
    assert dialog.retry_note.text() == "Trying Postgres again…"
    await wait_signal(
        bridge.statusChanged,
        10,
        lambda s: s.active_tier == "postgres",
        already=lambda: dialog.status().active_tier == "postgres",
    )
    assert dialog.tiers.item(0, 1).text() == "connected"
    await store.close()
