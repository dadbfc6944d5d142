"""storage/conversations.py: one index row, and the merge every tier applies (its SQL copies are held to it in
test_rule_copies.py). Two devices that exchange their rows in any order must end up with the same row."""

from __future__ import annotations

import itertools

import pytest

from storage.conversations import Conversation, listed, merge_conversations, row_to_conversation

ROWS = [
    Conversation("t", title, model, created, updated, meta, pinned, deleted)
    for title, model, pinned in [("Alpha", "m1", False), ("Beta", "m1", True), ("Alpha", "m2", True)]
    for created, updated in [(0.0, 10.0), (5.0, 20.0)]
    for meta in (1.0, 2.0)
    for deleted in (False, True)
]


@pytest.mark.parametrize("thread_id", ["", None, 7, "a\x00b"])
def test_a_row_needs_a_usable_thread_id(thread_id: object) -> None:
    with pytest.raises(ValueError, match="thread_id"):
        Conversation(thread_id)  # type: ignore[arg-type]


def test_nul_is_dropped_from_titles_and_model_names_and_other_types_refused() -> None:
    row = Conversation("t", title="pasted\x00title", model="m\x00")
    assert (row.title, row.model) == ("pastedtitle", "m")
    with pytest.raises(ValueError, match="title"):
        Conversation("t", title=None)  # type: ignore[arg-type]


def test_a_database_row_becomes_a_conversation() -> None:
    assert row_to_conversation(("t", "Title", "m", 1, 2, 3, 1, 0)) == Conversation(
        "t", "Title", "m", 1.0, 2.0, 3.0, True
    )


def test_newest_metadata_wins_times_widen_and_a_deletion_is_forever() -> None:
    mine = Conversation("t", "Old", "m1", created=5.0, updated=20.0, meta_changed=1.0, deleted=True)
    theirs = Conversation("t", "New", "m2", created=3.0, updated=10.0, meta_changed=2.0, pinned=True)
    merged = merge_conversations(mine, theirs)
    assert merged == Conversation("t", "New", "m2", 3.0, 20.0, 2.0, pinned=True, deleted=True)
    assert merge_conversations(None, theirs) == theirs


def test_a_creation_time_not_known_yet_takes_the_known_one() -> None:
    # created = 0 is "not known yet" (a row made before its first checkpoint): it must not win the minimum.
    known, unknown = Conversation("t", created=5.0), Conversation("t", created=0.0)
    assert merge_conversations(known, unknown).created == merge_conversations(unknown, known).created == 5.0


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(ROWS, 2)))
def test_two_devices_converge_whatever_the_order(a: Conversation, b: Conversation) -> None:
    # Each device holds one row and merges the other's in: both must end with the same row, ties included (two
    # edits stamped with the same time on two machines).
    if (a.created and b.created) or not (a.created or b.created):
        assert merge_conversations(a, b) == merge_conversations(b, a)
    else:
        assert merge_conversations(a, b).title == merge_conversations(b, a).title
    assert merge_conversations(merge_conversations(a, b), b) == merge_conversations(a, b)  # idempotent


def test_the_list_leaves_out_tombstones_and_puts_pinned_then_newest_first() -> None:
    rows = [
        Conversation("old", updated=1.0),
        Conversation("new", updated=3.0),
        Conversation("pinned-old", updated=0.5, pinned=True),
        Conversation("gone", updated=9.0, deleted=True),
    ]
    assert [r.thread_id for r in listed(rows)] == ["pinned-old", "new", "old"]
