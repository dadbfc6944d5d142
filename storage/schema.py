"""Cairn's own tables beside LangGraph's, as append-only migration lists (the index is the version).

Two things live here for each database:
- ``cairn_conversations``: the conversation index (title, created, updated, pinned, model, deleted tombstone).
  A trigger on LangGraph's ``checkpoints`` table creates the row of a new thread and moves ``updated`` on each new
  root checkpoint, so a thread with checkpoints is never missing from the list, whoever wrote it.
- SQLite only, ``cairn_outbox``: an append-only log of the checkpoint keys written locally, filled by triggers in
  the same transaction as the write; the sync task drains it into Postgres. It survives restarts and needs
  Postgres for nothing, so the pending count is true offline too.
"""

from __future__ import annotations

# SQLite has no clock function in seconds with a fraction before 3.42: derive it from julianday.
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

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
    SELECT DISTINCT thread_id, {_SQLITE_NOW}, {_SQLITE_NOW} FROM checkpoints
    WHERE checkpoint_ns = '' AND thread_id NOT IN (SELECT thread_id FROM cairn_conversations)
"""
POSTGRES_RECONCILE_INDEX = """
    INSERT INTO cairn_conversations (thread_id, created, updated)
    SELECT DISTINCT thread_id, extract(epoch from clock_timestamp()), extract(epoch from clock_timestamp())
    FROM checkpoints WHERE checkpoint_ns = ''
    ON CONFLICT (thread_id) DO NOTHING
"""
