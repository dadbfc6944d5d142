"""Messages sent before the chat engine has loaded (the window paints first, storage and the engine load after it)
are shown at once and sent as soon as the engine is there: in order, into one conversation, none lost or refused.

The window is built as ``gui.app.CairnApp.start`` builds it, with real storage and a real model server; the test
holds the moment the engine is attached (``attach_service``), which start-up reaches on its own a second later."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings

from chat.endpoints import Endpoint
from chat.service import ConversationService
from gui.main_window import MainWindow
from storage.factory import open_storage
from storage.secrets import SecretStore
from storage.settings import load_settings, save_settings
from tests.support.app import cairn_factory, type_and_send, until
from tests.support.keyring_backend import MemoryKeyring
from tests.support.model_server import ModelServer


async def test_messages_sent_while_the_engine_loads_are_sent_once_it_has(
    qtbot: Any, tmp_path: Path, server: ModelServer
) -> None:
    secrets = SecretStore(backend=MemoryKeyring())
    config_dir = tmp_path / "config"
    save_settings(
        {"MODEL_BASE_URL": server.base_url, "MODEL_NAME": "test-model", "CAIRN_DATA_DIR": str(tmp_path / "data")},
        config_dir=config_dir,
        secrets=secrets,
    )
    settings = load_settings(environ={}, cwd=tmp_path, config_dir=config_dir, strict=False)
    window = MainWindow(settings, secrets, QSettings(str(tmp_path / "state.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.new_chat()
    window.show()
    storage = await open_storage(settings, secrets)
    try:
        window.attach_storage(storage)
        finished: list[str] = []
        window.replyFinished.connect(finished.append)

        type_and_send(qtbot, window, "sent before the engine")
        type_and_send(qtbot, window, "and another one")
        assert [m.text for m in window.view.messages()] == ["sent before the engine", "and another one"]
        assert window.composer.text() == ""  # handed over, not refused back
        assert "sent as soon as" in window.statusBar().currentMessage()

        service = ConversationService(storage, Endpoint(server.base_url, "test-model"))
        window.attach_service(service)
        await until(lambda: len(finished) == 2, "both replies")
        assert finished[0] == finished[1]  # one conversation
        await until(lambda: len(window.view.messages()) == 4, "the conversation shown whole")
        assert [(m.role, m.text) for m in window.view.messages()] == [
            ("user", "sent before the engine"),
            ("assistant", "Echo: sent before the engine"),
            ("user", "and another one"),
            ("assistant", "Echo: and another one"),
        ]
        stored = await service.load(finished[0])
        assert [m.text for m in stored.messages] == [m.text for m in window.view.messages()]
        await window.stop_all_replies()
    finally:
        await storage.close()


async def test_starting_the_app_leaves_the_interpreter_as_python_made_it(tmp_path: Path, server: ModelServer) -> None:
    # Interpreter tuning (gui/tuning.py) belongs to the entry point, not to the app's classes: a test process (or
    # any other embedding) that starts the app keeps its own switch interval and garbage collector.
    interval, frozen = sys.getswitchinterval(), gc.get_freeze_count()
    async with cairn_factory(tmp_path, server)():
        assert sys.getswitchinterval() == interval
        assert gc.get_freeze_count() == frozen
