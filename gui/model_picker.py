"""The model menu of the status bar: which model answers in the open conversation.

It lists "Default (<the settings' model>)", the models the server offers (``GET /models``, asked in the background:
"Loading models…" until they arrive, the error in words if the server does not list them) with the current choice
checked, and "Settings…" at the end. Choosing emits ``chosen(model)``, "" for the default; the window stores it.
"""

from __future__ import annotations

import logging

import shiboken6
from PySide6.QtCore import QPoint, Signal
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QMenu, QWidget

from chat.endpoints import ModelListError, list_models
from chat.offload import model_thread
from storage.secrets import mask_secrets

log = logging.getLogger("cairn.gui")

MODEL_LIST_TIMEOUT = 10.0
ERROR_TEXT_LENGTH = 90
LOADING_TEXT = "Loading models…"


def _menu_text(text: str) -> str:
    return text.replace("&", "&&")  # a model name is not a mnemonic


class ModelMenu(QMenu):
    """``chosen(str)`` with the model picked ("" for the default), ``settingsRequested()`` for "Settings…";
    ``modelsLoaded(list[str] | str)`` once the server's answer is shown (the model ids, or the error in words)."""

    chosen = Signal(str)
    settingsRequested = Signal()
    modelsLoaded = Signal(object)

    def __init__(self, default_model: str, current: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelMenu")
        self.setToolTipsVisible(True)
        self.current = current
        self.models: list[str] | None = None
        self.error: str | None = None
        self._anchor: QPoint | None = None
        self._group = QActionGroup(self)
        self._group.setExclusive(True)
        self._choices: list[QAction] = []
        self.default_action = self._choice(f"Default ({default_model or 'none set'})", "")
        self.addAction(self.default_action)
        self.addSeparator()
        self.status_action = QAction(LOADING_TEXT, self)
        self.status_action.setEnabled(False)
        self.addAction(self.status_action)
        self._end = self.addSeparator()
        self.settings_action = QAction("Settings…", self)
        self.settings_action.triggered.connect(lambda _checked=False: self.settingsRequested.emit())
        self.addAction(self.settings_action)

    # --- content --------------------------------------------------------------------------------------------
    def _choice(self, text: str, model: str) -> QAction:
        action = QAction(_menu_text(text), self)
        action.setCheckable(True)
        action.setChecked(model == self.current)
        action.setData(model)
        action.triggered.connect(lambda _checked=False: self.chosen.emit(model))
        self._group.addAction(action)
        return action

    def model_actions(self) -> list[QAction]:
        """The server's models (and the current choice if the server no longer offers it), in menu order."""
        return list(self._choices)

    def action_for(self, model: str) -> QAction | None:
        """The entry that chooses ``model`` ("" for the default)."""
        if not model:
            return self.default_action
        return next((a for a in self._choices if a.data() == model), None)

    def checked_model(self) -> str | None:
        action = self._group.checkedAction()
        return str(action.data()) if action is not None else None

    def show_models(self, models: list[str]) -> None:
        self.models = list(models)
        if models:
            self.removeAction(self.status_action)
        else:
            self.status_action.setText("The server lists no models")
        self._add_choices(models)
        self.modelsLoaded.emit(list(models))

    def show_error(self, message: str) -> None:
        self.error = message
        shown = message if len(message) <= ERROR_TEXT_LENGTH else message[: ERROR_TEXT_LENGTH - 1].rstrip() + "…"
        self.status_action.setText(_menu_text(shown))
        self.status_action.setToolTip(message)
        self._add_choices([])
        self.modelsLoaded.emit(message)

    def _add_choices(self, models: list[str]) -> None:
        listed = list(models)
        if self.current and self.current not in listed:
            listed.append(self.current)  # chosen earlier: still shown (and checked) though the server lacks it
        for model in listed:
            action = self._choice(model if model in models else f"{model} (not listed by the server)", model)
            self._choices.append(action)
            self.insertAction(self._end, action)
        self._keep_anchored()

    # --- showing --------------------------------------------------------------------------------------------
    def popup_above(self, widget: QWidget) -> None:
        """Open (without a nested event loop) with the bottom edge on ``widget``'s top: the label is at the bottom."""
        self._anchor = widget.mapToGlobal(QPoint(0, 0))
        self.popup(self._anchor - QPoint(0, self.sizeHint().height()))

    def _keep_anchored(self) -> None:
        """The entries changed while open: grow upwards, so the menu stays above the label and on the screen."""
        if self._anchor is None or not self.isVisible():
            return
        hint = self.sizeHint()
        top = self._anchor.y() - hint.height()
        screen = self.screen()
        if screen is not None:
            top = max(top, screen.availableGeometry().top())
        self.setGeometry(self.x(), top, hint.width(), hint.height())

    # --- the server's list ----------------------------------------------------------------------------------
    async def load(self, base_url: str, api_key: str | None) -> None:
        """Ask the server for its models and show them (or why not)."""
        try:
            # On the model thread's loop: building an httpx client loads an SSL context synchronously (30-60 ms),
            # which would stall the window's loop. Cancelling this task (the window closing) cancels the request.
            models = await model_thread().run(list_models(base_url, api_key, timeout=MODEL_LIST_TIMEOUT))
        except ModelListError as exc:
            message = str(exc)
        except Exception as exc:
            log.exception("listing the models failed")
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if shiboken6.isValid(self):
                self.show_models(models)
            return
        if shiboken6.isValid(self):
            self.show_error(mask_secrets(message))
