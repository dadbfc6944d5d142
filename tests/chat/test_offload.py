"""chat/offload.py: the model call runs on its own thread and loop, and behaves as if it ran on the caller's."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from chat.offload import ModelThread, model_thread

request = contextvars.ContextVar("request", default="none")


async def test_runs_on_the_model_thread_with_the_callers_context() -> None:
    worker = ModelThread("test-model-thread")
    request.set("mine")

    async def where() -> tuple[str, str]:
        await asyncio.sleep(0)
        return threading.current_thread().name, request.get()

    assert await worker.run(where()) == ("test-model-thread", "mine")
    assert model_thread() is model_thread()  # one per process


async def test_an_error_reaches_the_caller_as_is() -> None:
    async def fail() -> None:
        raise LookupError("No model is chosen")

    with pytest.raises(LookupError, match="No model is chosen"):
        await ModelThread().run(fail())


async def test_cancelling_the_caller_cancels_the_call_and_waits_for_it_to_wind_down() -> None:
    worker = ModelThread()
    started, cleaned_up = threading.Event(), threading.Event()

    async def stream() -> None:
        started.set()
        try:
            await asyncio.sleep(60)  # a reply that takes its time
        finally:
            await asyncio.sleep(0.05)  # closing the HTTP stream
            cleaned_up.set()

    call = asyncio.ensure_future(worker.run(stream()))
    await asyncio.to_thread(started.wait, 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert cleaned_up.is_set()


async def test_the_callers_loop_keeps_running_while_the_model_thread_works() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def busy() -> int:
        total = 0
        for i in range(3_000_000):  # about 0.2 s of interpreter work, as building a long request is
            total += i
        return total

    ticker = asyncio.ensure_future(tick())
    try:
        assert await model_thread().run(busy()) == sum(range(3_000_000))
    finally:
        ticker.cancel()
    assert ticks > 10


async def test_stop_cancels_what_runs_there_and_ends_the_thread() -> None:
    worker = ModelThread("test-stopped-thread")
    started, cleaned_up = threading.Event(), threading.Event()

    async def stream() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a reply that never ends
        finally:
            cleaned_up.set()

    call = asyncio.ensure_future(worker.run(stream()))
    assert await asyncio.to_thread(started.wait, 5)
    thread = worker._thread
    assert thread is not None and thread.is_alive()

    assert await asyncio.to_thread(worker.stop, 5)
    assert cleaned_up.is_set() and not thread.is_alive()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 5)
    assert await worker.run(asyncio.sleep(0, "a new thread")) == "a new thread"  # usable again
    assert await asyncio.to_thread(worker.stop, 5)
    assert ModelThread().stop()  # never started: nothing to do
