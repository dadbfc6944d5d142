"""The model call's own thread and event loop, so preparing and reading a request never stalls the app's loop.

Sending in a conversation of 1,000 messages made langchain-openai and the openai SDK convert and validate the whole
history on the app's loop (about 180 ms in one piece), and every streamed chunk was parsed there too. Only the model
call moves here: the graph, its checkpointer (whose storage backends are bound to the app's loop) and everything
else stay where they were. Tokens still reach the graph's stream: LangGraph's stream handler hands each chunk to its
loop with ``call_soon_threadsafe``.

One daemon thread serves the whole process (started on first use): the HTTP clients langchain-openai caches per
endpoint are then always used from one loop. A call runs in a copy of the caller's context (LangGraph's config and
runtime live in context variables). Cancelling the caller cancels the call on the model thread, which closes the
HTTP stream, and waits a moment for that to finish, as an in-loop call would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

CANCEL_GRACE_SECONDS = 2.0
"""How long a cancelled caller waits for the model thread to wind the call down (close its HTTP stream)."""


class ModelThread:
    """A daemon thread running an asyncio loop; ``await run(coro)`` runs ``coro`` there and returns its result."""

    def __init__(self, name: str = "cairn-model") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                from storage.loop import new_selector_loop

                loop = new_selector_loop()
                started = threading.Event()
                thread = threading.Thread(target=self._main, args=(loop, started), name=self.name, daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def stop(self, timeout: float = CANCEL_GRACE_SECONDS) -> bool:
        """Cancel what still runs there (closing its HTTP streams), stop the loop and wait for the thread; True when
        it ended within ``timeout``. Called when the app quits; a later ``run`` starts a new thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or not thread.is_alive():
            return True

        async def wind_down() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=timeout) if tasks else None
            asyncio.get_running_loop().stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(wind_down()))
        thread.join(timeout)
        if thread.is_alive():
            return False
        loop.close()
        return True

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()

    def in_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the model thread (in a copy of the current context) and return what it returns."""
        caller = asyncio.get_running_loop()
        worker = self.loop
        if caller is worker:
            return await coro
        context = contextvars.copy_context()
        outcome: asyncio.Future[T] = caller.create_future()
        tasks: list[asyncio.Task[T]] = []

        def report(task: asyncio.Task[T]) -> None:  # on the model thread: hand the outcome to the caller's loop
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting any more
                caller.call_soon_threadsafe(_copy_outcome, task, outcome)

        def start() -> None:  # on the model thread
            task = worker.create_task(coro, context=context)
            task.add_done_callback(report)
            tasks.append(task)

        def cancel() -> None:  # on the model thread, always after start (one thread, FIFO)
            for task in tasks:
                task.cancel()

        worker.call_soon_threadsafe(start)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            if outcome.done():
                raise  # the call ended (or the model thread was stopped) just as we were cancelled
            try:
                worker.call_soon_threadsafe(cancel)
            except RuntimeError:  # the model thread stopped meanwhile: the call was cancelled with it
                raise asyncio.CancelledError from None
            await asyncio.wait([outcome], timeout=CANCEL_GRACE_SECONDS)
            if outcome.done() and not outcome.cancelled():
                outcome.exception()  # retrieved: the caller is gone, nobody else will look at it
            raise


def _copy_outcome(task: asyncio.Task[T], outcome: asyncio.Future[T]) -> None:
    if outcome.done():
        return
    if task.cancelled():
        outcome.cancel()
    elif (exc := task.exception()) is not None:
        outcome.set_exception(exc)
    else:
        outcome.set_result(task.result())


_shared: ModelThread | None = None
_shared_lock = threading.Lock()


def model_thread() -> ModelThread:
    """The process's model thread (created, not started, on first call; it starts on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ModelThread()
        return _shared
