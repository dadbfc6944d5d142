"""The local disk misbehaving under a running app: the file deleted, the disk full then freed, the folder read-only.

Real files on real file systems: a small tmpfs mounted for the test (as root, which PostgreSQL's fixtures already
assume of this machine) is filled, freed and remounted read-only; files are deleted with ``unlink``. Nothing in the
code under test is patched. Every turn written before, during and after must be there after a restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.manager import LOCAL_CHECK_SECONDS
from tests.support.chatgraph import build_graph, messages, turn
from tests.support.sync import SYNC_TIMEOUT, pg_checkpoint_keys
from tests.support.waiting import eventually, wait_for_status

NOTICED = LOCAL_CHECK_SECONDS + 5.0
"""The local file is checked every LOCAL_CHECK_SECONDS: a fault is noticed within that, plus a slow machine."""


def needs_root() -> None:
    if os.geteuid() != 0:
        message = "mounting a small file system needs root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@contextlib.contextmanager
def small_disk(size: str = "4M") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on a fresh folder; unmounted (lazily, whatever holds it) afterwards."""
    needs_root()
    where = Path(tempfile.mkdtemp(prefix="cairn-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


@contextlib.contextmanager
def ext4_disk(size: str = "16M") -> Iterator[Path]:
    """An ext4 file system in a loop-mounted image (it supports the immutable flag, which tmpfs ignores)."""
    needs_root()
    base = Path(tempfile.mkdtemp(prefix="cairn-ext4-"))
    image, where = base / "disk.img", base / "mnt"
    where.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True)
    device = loop.stdout.strip()
    try:
        subprocess.run(["blockdev", "--setrw", device], check=True)
        subprocess.run(["mount", device, str(where)], check=True)
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
        image.unlink(missing_ok=True)


def set_immutable(files: list[Path], on: bool) -> None:
    """``chattr +i``: even root, even through a descriptor already open, can no longer write the file (EPERM)."""
    present = [str(f) for f in files if f.exists()]
    subprocess.run(["chattr", "+i" if on else "-i", *present], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def texts(msgs: list[Any]) -> list[str]:
    return [str(m.content) for m in msgs]


async def conversation(storage: Any, thread_id: str) -> list[str]:
    return [t for t in texts(await messages(build_graph(storage.saver), thread_id)) if not t.startswith("re: ")]


@pytest.mark.parametrize("with_postgres", [False, True], ids=["local only", "with Postgres"])
async def test_the_file_deleted_mid_session_loses_no_turn(
    request: pytest.FixtureRequest, open_storage: Any, tmp_path: Path, with_postgres: bool
) -> None:
    pg_url = request.getfixturevalue("pg_url") if with_postgres else None
    data = tmp_path / "data"
    storage = await open_storage(data, pg_url)
    graph = build_graph(storage.saver)
    await turn(graph, "before", "written before")
    await storage.manager.update_conversation("before", title="Before the deletion")

    for name in ("cairn.sqlite", "cairn.sqlite-wal", "cairn.sqlite-shm"):
        (data / name).unlink(missing_ok=True)
    await turn(graph, "during", "written after the deletion, before it was noticed")
    status = await wait_for_status(storage.manager, lambda s: "deleted" in s.notice, NOTICED)
    assert status.active_tier in ("sqlite", "postgres"), status
    assert (data / "cairn.sqlite").exists()
    await turn(graph, "after", "written to the new file")
    await turn(graph, "before", "continued after")
    if pg_url is not None:

        async def uploaded() -> bool:
            assert storage.manager.sqlite is not None
            return await storage.manager.sqlite.checkpoint_keys() <= await pg_checkpoint_keys(pg_url)

        await eventually(uploaded, SYNC_TIMEOUT, "everything in Postgres too")
    await storage.close()

    again = await open_storage(data)  # no Postgres: the file alone must hold everything
    assert await conversation(again, "before") == ["written before", "continued after"]
    assert await conversation(again, "during") == ["written after the deletion, before it was noticed"]
    assert await conversation(again, "after") == ["written to the new file"]
    titles = {c.thread_id: c.title for c in await again.manager.conversations()}
    assert titles["before"] == "Before the deletion"


async def test_a_full_disk_then_freed_goes_back_to_the_file_and_keeps_every_turn(
    open_storage: Any, tmp_path: Path
) -> None:
    with small_disk() as disk:
        data = disk / "data"
        storage = await open_storage(data)
        graph = build_graph(storage.saver)
        await turn(graph, "early", "before the disk filled")
        filler = disk / "filler"
        fill(filler)
        for i in range(3):
            await turn(graph, "while-full", f"while full {i}")
        await storage.manager.update_conversation("while-full", title="Written while the disk was full")
        assert storage.manager.status().active_tier == "memory"

        filler.unlink()
        await wait_for_status(storage.manager, lambda s: s.active_tier == "sqlite", NOTICED)
        await turn(graph, "while-full", "after space was freed")
        await storage.close()

        again = await open_storage(data)
        assert await conversation(again, "early") == ["before the disk filled"]
        assert await conversation(again, "while-full") == [
            "while full 0",
            "while full 1",
            "while full 2",
            "after space was freed",
        ]
        titles = {c.thread_id: c.title for c in await again.manager.conversations()}
        assert titles["while-full"] == "Written while the disk was full"
        await again.close()


async def test_a_read_only_file_keeps_older_conversations_listed_and_readable(
    open_storage: Any, tmp_path: Path
) -> None:
    with ext4_disk() as disk:
        data = disk / "data"
        storage = await open_storage(data)
        graph = build_graph(storage.saver)
        for i in range(2):
            await turn(graph, "older", f"older turn {i}")
        await storage.manager.update_conversation("older", title="An older conversation")
        # Not the -shm file: SQLite maps it into memory, and a write to a mapped immutable file is a SIGBUS.
        files = [data / "cairn.sqlite", data / "cairn.sqlite-wal"]
        set_immutable(files, True)
        try:
            await turn(graph, "newer", "written while read-only")
            assert storage.manager.status().active_tier == "memory"
            listed = {c.thread_id: c.title for c in await storage.manager.conversations()}
            assert listed.get("older") == "An older conversation" and "newer" in listed
            assert await conversation(storage, "older") == ["older turn 0", "older turn 1"]
            assert await conversation(storage, "newer") == ["written while read-only"]
        finally:
            set_immutable(files, False)
        await wait_for_status(storage.manager, lambda s: s.active_tier == "sqlite", NOTICED)
        await storage.close()
        again = await open_storage(data)
        assert await conversation(again, "newer") == ["written while read-only"]
        await again.close()
