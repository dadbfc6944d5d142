"""``python main.py doctor``: the settings in effect and the state of each tier, the badge's answer in text (the
command adds the model server's section: ``chat.doctor``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from storage.secrets import SecretStore
from storage.settings import Settings
from storage.status import StorageStatus

MIN_ATTEMPT_SECONDS = 0.5
LIVE_WAIT_SECONDS = 1.0
"""Once Postgres answered: how long to wait for the LISTEN connection to say whether changes arrive live."""
"""The least time the Postgres attempt gets, however long start-up took: a server that answers at once must be
found."""


async def diagnose(settings: Settings, secrets: SecretStore, *, started: float | None = None) -> StorageStatus:
    """Open the storage as the app would, wait for the first Postgres attempt (bounded by its timeout), report.

    ``started`` (``time.monotonic()`` when the command began) counts the connect timeout from then, not from the
    attempt: the imports before it take about a second, and the promise is an answer within the timeout plus a
    second of the user asking."""
    if started is not None:
        left = settings.connect_timeout - (time.monotonic() - started)
        settings = replace(settings, connect_timeout=max(MIN_ATTEMPT_SECONDS, left))
    from storage.factory import open_storage  # here: the storage dialog shows these reports without the stack

    storage = await open_storage(settings, secrets, wait_for_postgres=True)
    try:
        await storage.manager.live_settled(LIVE_WAIT_SECONDS)
        await storage.manager.refresh_pending()
        return storage.manager.status()
    finally:
        await storage.close()


def report_json(
    settings: Settings, secrets: SecretStore, status: StorageStatus, extra: Mapping[str, Any] | None = None
) -> str:
    """``extra``: more top-level keys (the model server's section)."""
    data: dict[str, Any] = status.to_json()
    data.update(extra or {})
    data["settings"] = {key: {"value": shown, "source": source} for key, shown, source in settings.display_items()}
    data["settings_problems"] = list(settings.problems)
    data["keyring"] = {"backend": secrets.backend_name, "persistent": secrets.persistent, "warning": secrets.warning}
    return json.dumps(data, indent=2, default=str)


def report_text(
    settings: Settings, secrets: SecretStore, status: StorageStatus, extra: Sequence[str] = ()
) -> str:
    """``extra``: more sections, each a block of lines, after the storage (the model server's)."""
    lines = ["Cairn doctor", "", "Settings in effect:"]
    width = max(len(key) for key, _, _ in settings.display_items())
    for key, shown, source in settings.display_items():
        lines.append(f"  {key:<{width}}  {shown or '(empty)'}  [{source}]")
    for problem in settings.problems:
        lines.append(f"  ! {problem}")
    keyring = secrets.backend_name + (f" ({secrets.warning})" if secrets.warning else "")
    sections = [*lines, "", status_text(status, keyring)]
    for section in extra:
        sections += ["", section]
    return "\n".join(sections)


def status_text(status: StorageStatus, keyring: str) -> str:
    """The storage half of the report: each tier, the active one, what waits for Postgres, the keyring."""
    lines = ["Storage tiers:"]
    for name, tier in status.tiers.items():
        lines.append(f"  {name:<9} {tier.state:<11} {tier.reason}".rstrip())
        for key, value in tier.detail.items():
            lines.append(f"  {'':<9} {key}: {value}")
    lines += [
        "",
        f"Active tier:   {status.active_tier} ({status.reason})",
        f"Pending sync:  {status.pending_sync} change(s) not yet in Postgres: {status.pending_words}",
        f"Keyring:       {keyring}",
    ]
    if status.last_sync_error:
        lines.append(f"Last sync error: {status.last_sync_error}")
    return "\n".join(lines)
