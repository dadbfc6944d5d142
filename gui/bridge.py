"""The storage manager's events as Qt signals: the one place the GUI listens to storage."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import shiboken6
from PySide6.QtCore import QObject, Qt, QThread, Signal

from storage.changes import Changes
from storage.status import StorageStatus, TierEvent

if TYPE_CHECKING:  # the window is built before the storage stack is imported
    from storage.manager import StorageManager


class _Subscription:
    """The manager's unsubscribe, callable any number of times."""

    def __init__(self, unsubscribe: Callable[[], None]) -> None:
        self._unsubscribe: Callable[[], None] | None = unsubscribe

    @property
    def active(self) -> bool:
        return self._unsubscribe is not None

    def cancel(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            with contextlib.suppress(ValueError):  # the manager no longer had it
                unsubscribe()


class StorageBridge(QObject):
    """Re-emits ``StorageManager.subscribe`` callbacks as Qt signals, on the bridge's (the GUI) thread.

    ``statusChanged(StorageStatus)`` fires on every change the manager reports (tier, pending sync count);
    ``tierChanged(TierEvent)`` fires, after it, only when the active tier moved; ``changed(Changes)`` fires for
    every change to the conversations, whoever made it (``storage.changes``).
    Under qasync the manager calls back on the GUI thread and the signals are emitted at once; a call from
    another thread is queued to the bridge's thread.
    """

    statusChanged = Signal(object)
    tierChanged = Signal(object)
    changed = Signal(object)
    _relay = Signal(object, object)
    _relay_changes = Signal(object)

    def __init__(self, manager: StorageManager, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.manager = manager
        self._relay.connect(self._deliver, Qt.ConnectionType.QueuedConnection)
        self._relay_changes.connect(self.changed, Qt.ConnectionType.QueuedConnection)
        self._subscription = _Subscription(manager.subscribe(self._on_storage))
        self._change_subscription = _Subscription(manager.subscribe_changes(self._on_changes))
        # The manager outlives windows: the subscription ends with the bridge. The slot holds the subscription,
        # not the bridge, whose C++ side is gone by the time ``destroyed`` fires.
        self.destroyed.connect(self._subscription.cancel)
        self.destroyed.connect(self._change_subscription.cancel)

    @property
    def listening(self) -> bool:
        return self._subscription.active

    def status(self) -> StorageStatus:
        return self.manager.status()

    def retry_now(self) -> None:
        """Try Postgres again at once (the details dialog's "Retry now")."""
        self.manager.retry_now()

    def close(self) -> None:
        """Stop listening to the manager; calling it again does nothing."""
        self._subscription.cancel()
        self._change_subscription.cancel()

    def _on_changes(self, change: Changes) -> None:
        if not shiboken6.isValid(self):
            self._change_subscription.cancel()
            return
        if QThread.currentThread() is self.thread():
            self.changed.emit(change)
        else:
            self._relay_changes.emit(change)

    def _on_storage(self, status: StorageStatus, event: TierEvent | None) -> None:
        if not shiboken6.isValid(self):
            self._subscription.cancel()
            return
        if QThread.currentThread() is self.thread():
            self._deliver(status, event)
        else:
            self._relay.emit(status, event)

    def _deliver(self, status: StorageStatus, event: TierEvent | None) -> None:
        self.statusChanged.emit(status)
        if event is not None:
            self.tierChanged.emit(event)
