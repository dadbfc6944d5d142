"""Build the storage stack from the settings in effect: the one place settings become tiers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from storage.backends import PostgresTarget
from storage.manager import StorageManager
from storage.postgres_url import check_postgres_url
from storage.secrets import SecretStore, mask_secrets, resolve_password, split_password, store_url_password
from storage.settings import Settings
from storage.tiered import TieredSaver

log = logging.getLogger("cairn.storage")


@dataclass(frozen=True)
class StoragePlan:
    """What a storage stack is built from, the Postgres password included: two equal plans give the same storage,
    so a password changed in the keyring alone (the settings file keeps none) is a different plan."""

    data_dir: Path | None
    postgres: PostgresTarget | None
    postgres_reason: str
    retry_max_seconds: float


@dataclass
class Storage:
    manager: StorageManager
    saver: TieredSaver
    plan: StoragePlan | None = None  # what it was opened with (None: built by hand, as tests do)

    async def close(self) -> None:
        await self.manager.close()


def postgres_target(settings: Settings, secrets: SecretStore) -> tuple[PostgresTarget | None, str]:
    """The Postgres to use, or None and why not. A password typed into the URL moves to the keyring here."""
    url = settings.postgres_url.strip()
    if not url:
        return None, "no Postgres URL is configured"
    if not settings.use_postgres:
        return None, "Postgres is switched off (USE_POSTGRES_CHECKPOINTER=false)"
    try:
        # Before anything is stored: a URL that cannot work leaves no password behind. The message is masked.
        check_postgres_url(url)
        clean, inline_password = split_password(url)
    except ValueError as exc:
        return None, f"POSTGRES_DATABASE_URL is {mask_secrets(str(exc))}"
    if inline_password is not None:
        store_url_password(url, secrets)
    password = inline_password if inline_password is not None else resolve_password(clean, secrets)
    target = PostgresTarget(
        url=clean,
        password=password,
        pool_size=settings.pool_size,
        connect_timeout=settings.connect_timeout,
        prefer_async=settings.prefer_async_postgres,
    )
    return target, ""


def storage_plan(settings: Settings, secrets: SecretStore) -> StoragePlan:
    """The storage these settings and secrets give now (reads the keyring for the password)."""
    target, reason = postgres_target(settings, secrets)
    return StoragePlan(settings.data_dir, target, reason, settings.retry_max_seconds)


async def open_storage(settings: Settings, secrets: SecretStore, *, wait_for_postgres: bool = False) -> Storage:
    """Open the tiers and start the background tasks; needs a running selector loop."""
    plan = storage_plan(settings, secrets)
    manager = StorageManager(
        data_dir=plan.data_dir,
        postgres=plan.postgres,
        postgres_reason=plan.postgres_reason,
        retry_max_seconds=plan.retry_max_seconds,
        keyring_name=secrets.backend_name,
    )
    await manager.start(wait_for_postgres=wait_for_postgres)
    return Storage(manager, TieredSaver(manager), plan)
