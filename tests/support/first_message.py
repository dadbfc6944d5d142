"""A Cairn process sending the first message of a new conversation, to be killed:
``python -m tests.support.first_message DATA_DIR MODEL_URL THREAD TEXT MODEL FREEZE_AT``.

It opens the storage stack on DATA_DIR (no Postgres) and sends TEXT as the first message of THREAD through the
conversation service, against the model server at MODEL_URL (MODEL: the model chosen for the new conversation, ""
for none). Every change storage reports for THREAD is printed as one JSON line (``{"change": n, "turns": bool,
"index": bool}``), after it was committed. At change number FREEZE_AT (0: never) it prints ``{"frozen": n}`` and
stops the loop there, inside storage's own report of that change, blocked on stdin: nothing else this process
would write gets written, until the test kills it. Stdin closed (the test gone) lets it go on and end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chat.endpoints import Endpoint
from chat.service import ConversationService
from storage.changes import Changes
from storage.factory import Storage
from storage.loop import run
from storage.manager import StorageManager
from storage.tiered import TieredSaver


def say(data: object) -> None:
    print(json.dumps(data), flush=True)


async def main(data_dir: Path, model_url: str, thread_id: str, text: str, model: str, freeze_at: int) -> None:
    manager = StorageManager(data_dir=data_dir)
    await manager.start()
    seen = 0

    def heard(change: Changes) -> None:
        nonlocal seen
        if thread_id not in change.threads:
            return
        seen += 1
        say({"change": seen, "turns": thread_id in change.turns, "index": thread_id in change.index})
        if seen == freeze_at:
            say({"frozen": seen})
            sys.stdin.readline()  # blocks the loop: the process stays exactly here until it is killed

    manager.subscribe_changes(heard)
    service = ConversationService(Storage(manager, TieredSaver(manager)), Endpoint(model_url, "test-model"))
    try:
        events = service.send(thread_id, text, model=model) if model else service.send(thread_id, text)
        async for event in events:
            say({"event": type(event).__name__})
    finally:
        await manager.close()
    say({"done": True})


if __name__ == "__main__":
    data, url, thread, words, chosen, freeze = sys.argv[1:7]
    run(main(Path(data), url, thread, words, chosen, int(freeze)))
