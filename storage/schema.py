"""Cairn's own tables beside LangGraph's, as append-only migration lists (the index is the version).

Two things live here for each database:
- ``cairn_conversations``: the conversation index (title, created, updated, pinned, model, deleted tombstone).
  A trigger on LangGraph's ``checkpoints`` table creates the row of a new thread and moves ``updated`` on each new
  root checkpoint (to the time the checkpoint was made, read from its id), so a thread with checkpoints is never
  missing from the list, whoever wrote it, and the list is in the order of the conversations' last turns.
- SQLite only, ``cairn_outbox``: an append-only log of the checkpoint keys written locally, filled by triggers in
  the same transaction as the write; the sync task drains it into Postgres. It survives restarts and needs
  Postgres for nothing, so the pending count is true offline too.
"""

from __future__ import annotations

import uuid

SQLITE_FILE_NAME = "cairn.sqlite"
"""The local database, in the data folder."""

CHANGES_CHANNEL = "cairn_changes"
"""The Postgres NOTIFY channel of live changes (see POSTGRES_MIGRATIONS[2])."""
APP_NAME_PREFIX = "cairn:"
"""Cairn's Postgres connections say ``application_name = cairn:<device id>``: the triggers record the writer."""

# SQLite has no clock function in seconds with a fraction before 3.42: derive it from julianday.
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

# A checkpoint id is a UUID version 6 made from the clock of the machine that wrote the checkpoint: its 60-bit
# timestamp counts 100 ns since 1582-10-15, in hex digits 1-8, 10-13 and 16-18. A conversation's ``updated`` is the
# time of its newest turn read from there, so a conversation brought down from Postgres keeps its place in the list
# instead of rising to the top at the moment it arrived. (Clamped to now: a machine whose clock runs ahead must not
# pin its conversations to the top.)
_UUID6_EPOCH = 0x01B21DD213814000  # 1970-01-01 in those units
_UUID6_TIME_DIGITS = (*range(1, 9), *range(10, 14), *range(16, 19))


def checkpoint_stamp(checkpoint_id: str | None) -> int | None:
    """The 60-bit UUID v6 timestamp of a checkpoint id (100 ns ticks since 1582), or None for any other id."""
    # The usual spelling, read straight from the hex (a conversation's load reads one per message; uuid.UUID took
    # 4 ms of a 1,000-message load); any other spelling goes through uuid.UUID.
    if (
        isinstance(checkpoint_id, str)
        and len(checkpoint_id) == 36
        and checkpoint_id[14] == "6"
        and checkpoint_id[8] == checkpoint_id[13] == checkpoint_id[18] == checkpoint_id[23] == "-"
    ):
        try:
            return (int(checkpoint_id[0:8] + checkpoint_id[9:13], 16) << 12) | int(checkpoint_id[15:18], 16)
        except ValueError:
            return None
    try:
        value = uuid.UUID(checkpoint_id)
    except (ValueError, TypeError, AttributeError):
        return None
    if value.version != 6:
        return None
    return ((value.int >> 80) << 12) | ((value.int >> 64) & 0x0FFF)


def checkpoint_time(checkpoint_id: str) -> float | None:
    """Seconds since the epoch at which a checkpoint was made, from its id; None if the id is not a UUID v6."""
    stamp = checkpoint_stamp(checkpoint_id)
    return None if stamp is None else (stamp - _UUID6_EPOCH) / 1e7


def _sqlite_checkpoint_time(checkpoint_id: str) -> str:
    """``checkpoint_time`` in SQLite's SQL (no hex parsing there: one digit at a time), or now."""
    digits = " + ".join(
        f"(instr('0123456789abcdef', lower(substr({checkpoint_id}, {pos}, 1))) - 1) * {16 ** (14 - i)}"
        for i, pos in enumerate(_UUID6_TIME_DIGITS)
    )
    return (
        f"(CASE WHEN length({checkpoint_id}) = 36 AND substr({checkpoint_id}, 15, 1) = '6' "
        f"THEN min({_SQLITE_NOW}, ({digits} - {_UUID6_EPOCH}) / 1e7) ELSE {_SQLITE_NOW} END)"
    )


def _sqlite_change_trigger(name: str, event: str) -> str:
    return f"""CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} BEGIN
        INSERT INTO cairn_changes (thread_id, seq)
        VALUES (NEW.thread_id, (SELECT coalesce(max(seq), 0) + 1 FROM cairn_changes))
        ON CONFLICT (thread_id) DO UPDATE SET seq = excluded.seq;
    END;"""


SQLITE_MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE IF NOT EXISTS cairn_conversations (
        thread_id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        updated REAL NOT NULL,
        meta_changed REAL NOT NULL DEFAULT 0,
        pinned INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        dirty INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS cairn_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        thread_id TEXT NOT NULL,
        checkpoint_ns TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS cairn_outbox_key ON cairn_outbox (thread_id, checkpoint_ns, checkpoint_id);
    CREATE TRIGGER IF NOT EXISTS cairn_outbox_checkpoint AFTER INSERT ON checkpoints BEGIN
        INSERT INTO cairn_outbox (thread_id, checkpoint_ns, checkpoint_id)
        VALUES (NEW.thread_id, NEW.checkpoint_ns, NEW.checkpoint_id);
    END;
    CREATE TRIGGER IF NOT EXISTS cairn_outbox_write AFTER INSERT ON writes BEGIN
        INSERT INTO cairn_outbox (thread_id, checkpoint_ns, checkpoint_id)
        VALUES (NEW.thread_id, NEW.checkpoint_ns, NEW.checkpoint_id);
    END;
    CREATE TRIGGER IF NOT EXISTS cairn_touch_conversation AFTER INSERT ON checkpoints
    WHEN NEW.checkpoint_ns = '' BEGIN
        INSERT INTO cairn_conversations (thread_id, created, updated)
        VALUES (NEW.thread_id, {_SQLITE_NOW}, {_SQLITE_NOW})
        ON CONFLICT (thread_id) DO UPDATE SET updated = excluded.updated;
    END;
    """,
    # 1: ``created`` and ``updated`` from the checkpoints' own times, not from when they arrived here.
    f"""
    DROP TRIGGER IF EXISTS cairn_touch_conversation;
    CREATE TRIGGER cairn_touch_conversation AFTER INSERT ON checkpoints
    WHEN NEW.checkpoint_ns = '' BEGIN
        INSERT INTO cairn_conversations (thread_id, created, updated)
        VALUES (NEW.thread_id, {_sqlite_checkpoint_time("NEW.checkpoint_id")},
                {_sqlite_checkpoint_time("NEW.checkpoint_id")})
        ON CONFLICT (thread_id) DO UPDATE SET
            updated = max(updated, excluded.updated), created = min(created, excluded.created);
    END;
    UPDATE cairn_conversations SET updated = min(updated, coalesce((
        SELECT {_sqlite_checkpoint_time("newest")} FROM (
            SELECT max(checkpoint_id) AS newest FROM checkpoints
            WHERE thread_id = cairn_conversations.thread_id AND checkpoint_ns = ''
        ) WHERE newest IS NOT NULL), updated));
    """,
    # 2: this data folder's device id (Postgres tells its writes apart by it), and a change log: one row per thread
    # with the position of its last change, so a second process on the same file learns what changed.
    f"""
    CREATE TABLE IF NOT EXISTS cairn_device (id TEXT NOT NULL);
    INSERT INTO cairn_device (id) SELECT lower(hex(randomblob(8))) WHERE NOT EXISTS (SELECT 1 FROM cairn_device);
    CREATE TABLE IF NOT EXISTS cairn_changes (thread_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS cairn_changes_seq ON cairn_changes (seq);
    {_sqlite_change_trigger("cairn_change_checkpoint", "INSERT ON checkpoints")}
    {_sqlite_change_trigger("cairn_change_write", "INSERT ON writes")}
    {_sqlite_change_trigger("cairn_change_index_insert", "INSERT ON cairn_conversations")}
    {_sqlite_change_trigger("cairn_change_index", "UPDATE OF title, model, pinned, deleted ON cairn_conversations")}
    """,
)

POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS cairn_conversations (
        thread_id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '',
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        meta_changed DOUBLE PRECISION NOT NULL DEFAULT 0,
        pinned BOOLEAN NOT NULL DEFAULT false,
        deleted BOOLEAN NOT NULL DEFAULT false
    );
    CREATE OR REPLACE FUNCTION cairn_touch_conversation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO cairn_conversations (thread_id, created, updated)
        VALUES (NEW.thread_id, extract(epoch from clock_timestamp()), extract(epoch from clock_timestamp()))
        ON CONFLICT (thread_id) DO UPDATE SET updated = excluded.updated;
        RETURN NULL;
    END $$;
    DROP TRIGGER IF EXISTS cairn_touch_conversation ON checkpoints;
    CREATE TRIGGER cairn_touch_conversation AFTER INSERT ON checkpoints
        FOR EACH ROW WHEN (NEW.checkpoint_ns = '') EXECUTE FUNCTION cairn_touch_conversation();
    """,
    # 1: ``created`` and ``updated`` from the checkpoints' own times (as SQLite's migration 1).
    f"""
    CREATE OR REPLACE FUNCTION cairn_checkpoint_time(id text) RETURNS double precision
    LANGUAGE sql IMMUTABLE AS $$
        SELECT CASE WHEN id ~ '^[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-6[0-9a-fA-F]{{3}}-'
            THEN (('x' || substr(id, 1, 8) || substr(id, 10, 4) || substr(id, 16, 3))::bit(60)::bigint
                  - {_UUID6_EPOCH}) / 1e7
        END
    $$;
    CREATE OR REPLACE FUNCTION cairn_touch_conversation() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        clock double precision := extract(epoch from clock_timestamp());
        made double precision := least(clock, coalesce(cairn_checkpoint_time(NEW.checkpoint_id), clock));
    BEGIN
        INSERT INTO cairn_conversations AS cur (thread_id, created, updated)
        VALUES (NEW.thread_id, made, made)
        ON CONFLICT (thread_id) DO UPDATE SET
            updated = greatest(cur.updated, excluded.updated), created = least(cur.created, excluded.created);
        RETURN NULL;
    END $$;
    UPDATE cairn_conversations AS cur SET updated = least(cur.updated, newest.made)
    FROM (
        SELECT thread_id, cairn_checkpoint_time(max(checkpoint_id)) AS made FROM checkpoints
        WHERE checkpoint_ns = '' GROUP BY thread_id
    ) AS newest
    WHERE newest.thread_id = cur.thread_id AND newest.made IS NOT NULL;
    """,
    # 2: live changes. Every change to a thread's checkpoints, writes or index row moves the thread's row in
    # ``cairn_changes`` to the next position and NOTIFYs CHANGES_CHANNEL with the thread and the writing device
    # (its connections' application_name), at commit. A client LISTENs and pulls what it lacks; one that was not
    # listening asks for the rows past the last position it saw.
    f"""
    CREATE SEQUENCE IF NOT EXISTS cairn_change_seq;
    CREATE TABLE IF NOT EXISTS cairn_changes (
        thread_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        device TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS cairn_changes_seq ON cairn_changes (seq);
    CREATE OR REPLACE FUNCTION cairn_note_change() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        device text := coalesce(current_setting('application_name', true), '');
    BEGIN
        INSERT INTO cairn_changes AS cur (thread_id, seq, device)
        VALUES (NEW.thread_id, nextval('cairn_change_seq'), device)
        ON CONFLICT (thread_id) DO UPDATE SET seq = excluded.seq, device = excluded.device;
        PERFORM pg_notify('{CHANGES_CHANNEL}', json_build_object('t', left(NEW.thread_id, 7000), 'd', device)::text);
        RETURN NULL;
    END $$;
    DROP TRIGGER IF EXISTS cairn_change_checkpoint ON checkpoints;
    CREATE TRIGGER cairn_change_checkpoint AFTER INSERT OR UPDATE ON checkpoints
        FOR EACH ROW EXECUTE FUNCTION cairn_note_change();
    DROP TRIGGER IF EXISTS cairn_change_write ON checkpoint_writes;
    CREATE TRIGGER cairn_change_write AFTER INSERT OR UPDATE ON checkpoint_writes
        FOR EACH ROW EXECUTE FUNCTION cairn_note_change();
    DROP TRIGGER IF EXISTS cairn_change_index ON cairn_conversations;
    CREATE TRIGGER cairn_change_index AFTER INSERT OR UPDATE OF title, model, pinned, deleted ON cairn_conversations
        FOR EACH ROW EXECUTE FUNCTION cairn_note_change();
    """,
)

SQLITE_MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS cairn_migrations (v INTEGER PRIMARY KEY)"
POSTGRES_MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS cairn_migrations (v INTEGER PRIMARY KEY)"
# Two machines may set up one database at once: serialise on a fixed advisory lock key ("cairn").
POSTGRES_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(6361726110)"

INDEX_COLUMNS = "thread_id, title, model, created, updated, meta_changed, pinned, deleted"

# Run at every open: threads whose checkpoints predate Cairn's tables or trigger (a database written by plain
# LangGraph) get their index row, so a thread with checkpoints is never missing from the list.
SQLITE_RECONCILE_INDEX = f"""
    INSERT INTO cairn_conversations (thread_id, created, updated)
    SELECT thread_id, {_sqlite_checkpoint_time("oldest")}, {_sqlite_checkpoint_time("newest")} FROM (
        SELECT thread_id, min(checkpoint_id) AS oldest, max(checkpoint_id) AS newest FROM checkpoints
        WHERE checkpoint_ns = '' AND thread_id NOT IN (SELECT thread_id FROM cairn_conversations)
        GROUP BY thread_id
    )
"""
POSTGRES_RECONCILE_INDEX = """
    INSERT INTO cairn_conversations (thread_id, created, updated)
    SELECT thread_id,
           least(extract(epoch from clock_timestamp()),
                 coalesce(cairn_checkpoint_time(min(checkpoint_id)), extract(epoch from clock_timestamp()))),
           least(extract(epoch from clock_timestamp()),
                 coalesce(cairn_checkpoint_time(max(checkpoint_id)), extract(epoch from clock_timestamp())))
    FROM checkpoints
    WHERE checkpoint_ns = ''
      AND NOT EXISTS (SELECT 1 FROM cairn_conversations c WHERE c.thread_id = checkpoints.thread_id)
    GROUP BY thread_id
    ON CONFLICT (thread_id) DO NOTHING
"""
