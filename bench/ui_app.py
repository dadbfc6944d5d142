"""bench.ui's measures inside the app: run in a child process whose working directory is the checkout measured.

``bench.ui`` starts ``python -c BOOT <this file> <request as JSON>`` in the checkout measured: the checkout comes
first on ``sys.path`` (``-c``), so ``gui``, ``chat``, ``storage`` and ``tests.support`` are that checkout's, while
this file (the harness) is always the checkout running ``bench.ui``. It imports nothing from ``bench`` for that
reason, and it knows both conversation views: the text view (``gui.chat_view.ChatView``, a QTextBrowser: a frame is
a paint event of its viewport) and the cards view (``gui.conversation.view.QuickChatView``, a QQuickWidget: a frame
is its scene's ``afterRendering``; its software frames emit no ``frameSwapped``). Which one the window made is read
on ``window.view``, never from a setting. The result is one line on stdout: ``RESULT {json}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BOOT = "import runpy, sys; path = sys.argv.pop(1); runpy.run_path(path, run_name='__main__')"
TICK_MS = 5
IDLE_FRAMES = {"wait", "get", "select", "_worker", "_connection_worker_thread"}  # a thread waiting for work
SEND_TIMEOUT = 300.0


class Ticker:
    """A 5 ms precise Qt timer on the loop's thread; each tick's time and the thread's CPU time then are kept (the
    gaps are what the loop could not run; the CPU in a gap tells a stall from a descheduled process)."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.ticks: list[float] = []
        self.cpu: list[float] = []
        self.process_cpu: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)

    def tick(self) -> None:
        self.ticks.append(time.perf_counter())
        self.cpu.append(time.thread_time())
        self.process_cpu.append(time.process_time())

    def start(self) -> None:
        self.ticks, self.cpu, self.process_cpu = [], [], []
        self.tick()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.tick()

    def gaps(self) -> list[float]:
        return [(b - a) * 1000 for a, b in zip(self.ticks, self.ticks[1:], strict=False)]

    def max_gap_between(self, start: float, stop: float) -> float:
        gaps = [b - a for a, b in zip(self.ticks, self.ticks[1:], strict=False) if b > start and a < stop]
        return max(gaps, default=0.0) * 1000

    def cpu_in_max_gap(self) -> tuple[float, float]:
        """ms of CPU in the worst gap: the loop's thread's, and the whole process's (all its threads: much more
        than the loop's own is another thread of the app computing, likely with the interpreter lock; little of
        both is the process waiting for a core)."""
        gaps = self.gaps()
        worst = max(range(len(gaps)), key=gaps.__getitem__)
        return (
            (self.cpu[worst + 1] - self.cpu[worst]) * 1000,
            (self.process_cpu[worst + 1] - self.process_cpu[worst]) * 1000,
        )


class StallSampler:
    """Where the loop's thread is while the loop stalls: a watcher thread samples the main thread's Python stack
    whenever the ticker has not ticked for ``threshold_ms`` (``--stalls``; a diagnosis aid, not a measure)."""

    def __init__(self, ticker: Ticker, threshold_ms: float = 15.0) -> None:
        import gc
        import threading

        self.ticker = ticker
        self.threshold = threshold_ms / 1000
        self.samples: list[tuple[float, tuple[str, ...]]] = []  # (the last tick before the stall, the stack)
        self.others: list[tuple[float, str]] = []  # (the last tick before the stall, another thread's innermost frames)
        self._main = threading.main_thread().ident
        self._running = True
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)
        self.collections: list[tuple[float, float, int]] = []  # (start, ms, generation) of each slow collection
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)
        self._thread.start()

    def _run(self) -> None:
        import threading
        import traceback

        names = {}
        while self._running:
            time.sleep(0.002)
            ticks = self.ticker.ticks
            if not ticks or not self.ticker.timer.isActive():
                continue
            last = ticks[-1]
            if time.perf_counter() - last < self.threshold:
                continue
            frames = sys._current_frames()
            frame = frames.get(self._main)
            if frame is None:
                continue
            stack = tuple(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-40:])
            self.samples.append((last, stack))
            # What the other threads run meanwhile: one holding the interpreter lock in a long C call (a
            # validation, an encoding) stops the loop as surely as the loop's own work.
            for ident, other in frames.items():
                if ident in (self._main, threading.get_ident()):
                    continue
                if ident not in names:
                    names = {t.ident: t.name for t in threading.enumerate()}
                inner = traceback.extract_stack(other)[-3:]
                if inner and inner[-1].name in IDLE_FRAMES:
                    continue
                where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(inner))
                self.others.append((last, f"[{names.get(ident, ident)}] {where}"))

    def _on_gc(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        elif (now - self._gc_started) * 1000 > 2:
            self.collections.append((self._gc_started, (now - self._gc_started) * 1000, info["generation"]))

    def stop(self) -> None:
        import gc

        gc.callbacks.remove(self._on_gc)
        self._running = False
        self._thread.join()

    def summary(self, top: int = 25) -> str:
        """Per stall of the ticker: its length, and the frames most often on the stack during it."""
        from collections import Counter

        by_stall: dict[float, list[tuple[str, ...]]] = {}
        for last, stack in self.samples:
            by_stall.setdefault(last, []).append(stack)
        lines = []
        ticks = self.ticker.ticks
        for started, ms, generation in self.collections:
            lines.append(
                f"garbage collection (generation {generation}) of {ms:.0f} ms at +{(started - ticks[0]) * 1000:.0f} ms"
            )
        for last, stacks in sorted(by_stall.items()):
            after = next((t for t in ticks if t > last), ticks[-1])
            lines.append(
                f"stall of {(after - last) * 1000:.0f} ms at +{(last - ticks[0]) * 1000:.0f} ms, {len(stacks)} samples:"
            )
            counts = Counter(frame for stack in stacks for frame in set(stack))
            order = {frame: i for stack in stacks for i, frame in enumerate(stack)}
            common = [f for f, _c in counts.most_common() if not f.startswith(("base_events.py", "qasync"))][:top]
            for frame in sorted(common, key=lambda f: order[f]):
                lines.append(f"    {counts[frame]:4d}  {frame}")
            others = Counter(where for at, where in self.others if at == last)
            for where, count in others.most_common(6):
                lines.append(f"    {count:4d}  other thread: {where}")
        return "\n".join(lines)


async def wait_signal(signal: Any, predicate: Callable[..., bool], timeout: float) -> None:
    future = asyncio.get_running_loop().create_future()

    def slot(*args: Any) -> None:
        if not future.done() and predicate(*args):
            future.set_result(None)

    signal.connect(slot)
    try:
        async with asyncio.timeout(timeout):
            await future
    finally:
        signal.disconnect(slot)


def view_kind(view: Any) -> str:
    """ "cards" for a view drawn by Qt Quick (it has a ``quick_window``), "text" for the QTextBrowser view."""
    return "cards" if hasattr(view, "quick_window") else "text"


class FrameWatch:
    """Sets ``future`` to the time of the view's first frame once ``armed``: a paint event of the text view's
    viewport, or the cards view's scene rendered (``afterRendering`` of its ``quick_window()``)."""

    def __init__(self, view: Any, future: asyncio.Future[float]) -> None:
        self.armed = False
        self.future = future
        self.view = view
        if view_kind(view) == "cards":
            self.window = view.quick_window()
            self.window.afterRendering.connect(self.frame)
            self.filter: Any = None
        else:
            from PySide6.QtCore import QEvent, QObject

            watch = self

            class Filter(QObject):
                def eventFilter(self, _watched: Any, event: Any) -> bool:
                    if event.type() == QEvent.Type.Paint:
                        watch.frame()
                    return False

            self.filter = Filter()
            view.viewport().installEventFilter(self.filter)

    def frame(self) -> None:
        if self.armed and not self.future.done():
            self.future.set_result(time.perf_counter())

    def remove(self) -> None:
        if self.filter is None:
            self.window.afterRendering.disconnect(self.frame)
        else:
            self.view.viewport().removeEventFilter(self.filter)


async def open_by_click(window: Any, thread: str) -> dict[str, float]:
    """Click the conversation in the list; ms until the view's first frame showing it, and the window's own split
    (load: reading it from storage; render: handing it to the view)."""
    from tests.support.app import click_at

    sidebar = window.sidebar
    item = sidebar.item_for(thread)
    assert item is not None, f"{thread} is not in the list"
    sidebar.list.scrollToItem(item)
    await asyncio.sleep(0.1)  # the scroll is painted before the clock starts
    rect = sidebar.list.visualItemRect(item)
    painted: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    watch = FrameWatch(window.view, painted)

    def shown(thread_id: str) -> None:  # from now on, the view's next frame shows the conversation
        if thread_id == thread:
            watch.armed = True

    window.conversationShown.connect(shown)
    try:
        started = time.perf_counter()
        click_at(sidebar.list.viewport(), rect.center())
        async with asyncio.timeout(30):
            done = await painted
    finally:
        window.conversationShown.disconnect(shown)
        watch.remove()
    load, render = window.last_open_timing
    return {"ms": (done - started) * 1000, "load": load, "render": render}


async def send_message(window: Any, text: str, *, stalls: bool = False) -> dict[str, Any]:
    """Type ``text`` into the composer and press Enter; the loop's gaps until the window says the reply is done."""
    from PySide6.QtCore import QEvent, Qt
    from PySide6.QtGui import QKeyEvent
    from PySide6.QtWidgets import QApplication

    thread = window.current
    view = window.view
    marks: dict[str, float] = {}
    append = view.append_tokens

    def tokens(text: str) -> None:  # when tokens reach the view: the first, the last
        now = time.perf_counter()
        marks.setdefault("first", now)
        marks["last"] = now
        append(text)

    view.append_tokens = tokens
    ticker = Ticker()
    finished = asyncio.ensure_future(wait_signal(window.replyFinished, lambda t: t == thread, SEND_TIMEOUT))
    await asyncio.sleep(0.2)  # quiet before the clock starts
    edit = window.composer.edit
    edit.setFocus()
    edit.setPlainText(text)
    ticker.start()
    sampler = StallSampler(ticker) if stalls else None
    started = time.perf_counter()
    QApplication.sendEvent(edit, QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Return, Qt.KeyboardModifier.NoModifier))
    await finished
    ended = time.perf_counter()
    ticker.stop()
    if sampler is not None:
        sampler.stop()
        print(sampler.summary(), file=sys.stderr)
    del view.append_tokens
    gaps = sorted(ticker.gaps())
    loop_cpu, process_cpu = ticker.cpu_in_max_gap()
    first, last = marks.get("first", ended), marks.get("last", ended)
    return {
        "p99": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))],
        "max": gaps[-1],
        "cpu_in_max": loop_cpu,
        "process_cpu_in_max": process_cpu,
        "start": ticker.max_gap_between(started, first),
        "stream": ticker.max_gap_between(first, last),
        "end": ticker.max_gap_between(last, ended),
        "total_s": ended - started,
        "first_token_ms": (first - started) * 1000,
    }


def run(request: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Start the app on the request's settings, open the long conversations and send into one; the numbers."""
    from PySide6.QtWidgets import QApplication

    from gui import tuning
    from gui.app import CairnApp, configure
    from storage.loop import new_qt_loop
    from storage.secrets import SecretStore
    from storage.settings import load_settings
    from tests.support.keyring_backend import MemoryKeyring

    config_dir = Path(request["config_dir"])
    threads: dict[str, str] = request["threads"]
    app = QApplication.instance() or QApplication(["cairn-bench"])
    assert isinstance(app, QApplication)
    configure(app)
    tuning.tune_interpreter()  # measured as the app runs (gui.app.run does the same)
    app.setQuitOnLastWindowClosed(False)
    loop = new_qt_loop(app)
    asyncio.set_event_loop(loop)
    settings = load_settings(environ=request["env"], cwd=config_dir, config_dir=config_dir, strict=False)
    cairn = CairnApp(app, settings=settings, secrets=SecretStore(backend=MemoryKeyring()))
    result: dict[str, Any] = {"opens": {}, "sends": {}}

    async def main() -> None:
        try:
            window = await cairn.start()
            tuning.freeze_startup_objects()
            if hasattr(tuning, "collect_when_quiet"):  # as gui.app.run does (a baseline checkout may predate it)
                tuning.collect_when_quiet(window)
            result["view"] = view_kind(window.view)
            result["view_class"] = type(window.view).__name__
            window.activateWindow()
            await asyncio.sleep(1.0)  # the list is filled, the first Postgres attempt is under way
            for n in range(request["opens"]):
                for size in ("long", "huge"):
                    opened = await open_by_click(window, threads[size])
                    result["opens"].setdefault(size, []).append(opened)
                    log(
                        f"  open {size} {n + 1}: {opened['ms']:.0f} ms (load {opened['load']:.0f},"
                        f" render {opened['render']:.0f} ms)"
                    )
                    await open_by_click(window, threads["short"])
            await open_by_click(window, threads["long"])
            for kind in request["kinds"]:
                for n in range(request["sends"]):
                    send = await send_message(
                        window, f"Send {n} [{kind}]: a question about the **loop**?", stalls=request["stalls"]
                    )
                    result["sends"].setdefault(kind, []).append(send)
                    log(
                        f"  send {n + 1} ({kind}): {send['total_s']:.1f} s, first token after "
                        f"{send['first_token_ms']:.0f} ms, p99 {send['p99']:.1f} ms, max {send['max']:.0f} ms "
                        f"(CPU in it: the loop {send['cpu_in_max']:.0f}, the process {send['process_cpu_in_max']:.0f};"
                        f" start {send['start']:.0f}, stream {send['stream']:.0f},"
                        f" end {send['end']:.0f})"
                    )
        finally:
            from tests.support.app import quit_app

            await quit_app(cairn)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    from chat.offload import model_thread

    model_thread().stop()
    return result


def child_main() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    request = json.loads(sys.argv[1])

    def log(message: str) -> None:
        print(f"{request['label']}:{message}", file=sys.stderr, flush=True)

    result = run(request, log)
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # no teardown of Qt's objects by the interpreter: the numbers are out


if __name__ == "__main__":
    child_main()
