"""How the window feels: loop stalls during a send, first paint, opening a long conversation, idle memory.

Usage::

    .venv/bin/python -m bench.ui            # print the table (about 4 minutes on 2 cores, data included)
    .venv/bin/python -m bench.ui --write    # and update the "UI" section of docs/PERFORMANCE.md
    .venv/bin/python -m bench.ui --quick    # fewer runs (a smoke run)
    .venv/bin/python -m bench.ui --stalls   # also print where the loop's thread was during each stall
    .venv/bin/python -m bench.ui --data DIR # build the data once into DIR and reuse it on later runs

Everything is the real thing: ``gui.app.CairnApp`` and its ``MainWindow`` on the selector qasync loop (offscreen
Qt), a real SQLite data folder holding 1,000 conversations (999 of one turn, and one of 1,000 messages built turn by
turn through the chat graph, so its storage has the shape a real chat leaves: deltas and snapshots), and Postgres
configured but never answering: the URL points at ``tests.support.netproxy.TcpProxy`` in ``blackhole()`` mode (it
accepts
the connection and then says nothing, like a partitioned network) in front of a port where nothing listens (or of a
throwaway ``tests.support.pgcluster.PgCluster`` with ``--pgcluster``). The model is
``tests.support.model_server.ModelServer``, in
its own process (its writing must not compete with the app for the interpreter lock), streaming 2,000 tokens at
200 tokens/s (``token_delay=0.005``): either one paragraph of filler words (``token_count``) or a Markdown reply
with headings, lists, code blocks and tables.

- Stall: a 5 ms Qt timer (``PreciseTimer``) ticks on the loop's thread while a message is typed into the composer
  and sent with Enter into the open 1,000-message conversation, until the window says the reply is finished
  (stored, reloaded, the list refreshed). A gap between ticks is time the loop could not run; p99 and max of the
  gaps per send, median over 3 sends of each kind of reply, and the worst gap of each phase (start: Enter → first
  token shown; streaming; end: last token → finished).
- First paint: ``main.py`` in a fresh process (the same data, settings from ``CAIRN_CONFIG_DIR``), from just before
  the process is spawned until the window's first paint event; median of 5 processes.
- Open: a click on the conversation in the list until the conversation view's first paint after it has shown the
  messages; median of 5 opens (a short conversation is opened in between, so each is a real open). The first open
  of the process is also shown on its own: nothing is cached yet.
- Idle RSS: the resident memory of each of those ``main.py`` processes 3 s after its chat engine is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import machine, write_section
from bench.report import versions as report_versions

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/ui.py` as well as `python -m bench.ui`
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

DOCS = ROOT / "docs" / "PERFORMANCE.md"
SECTION = "## UI"
OTHER_SECTIONS = (("## Storage", "Written by `.venv/bin/python -m bench.storage --write`."),)
COMMAND = ".venv/bin/python -m bench.ui --write"

CONVERSATIONS = 1_000
LONG_MESSAGES = 1_000
TOKENS = 2_000
TOKEN_DELAY = 0.005
TICK_MS = 5
IDLE_SECONDS = 3.0


@dataclass(frozen=True)
class Target:
    name: str
    limit: float
    unit: str


TARGETS = {
    "p99": Target("Loop stall during a send, p99 gap", 16, "ms"),
    "max": Target("Loop stall during a send, max gap", 50, "ms"),
    "paint": Target("Process start → first paint", 1000, "ms"),
    "open": Target("Open a 1,000-message conversation (click → painted)", 150, "ms"),
    "cold": Target("… the first open after start (cold)", 150, "ms"),
    "rss": Target("Idle RSS after start", 250, "MB"),
}


# --- the data ---------------------------------------------------------------------------------------------------


VOCABULARY = (
    "the of graph message stored local sync tier window thread reply token model server cache layout loop paint frame "
    "delta snapshot writer reader index channel value shows about which where after before"
)


def _words(seed: int, count: int) -> str:
    vocabulary = VOCABULARY.split()
    return " ".join(vocabulary[(seed * 7 + i * 13) % len(vocabulary)] for i in range(count))


def user_text(i: int) -> str:
    return f"Question {i}: {_words(i, 30)}?"  # about 200 characters


def reply_text(i: int) -> str:
    return (  # about 300 characters, with the Markdown a reply has: emphasis, a list, a code block
        f"Answer {i}: **{_words(i + 1, 4)}** {_words(i + 2, 12)}.\n\n"
        f"- {_words(i + 3, 5)}\n- {_words(i + 4, 5)}\n\n"
        f"```python\nprint({i})  # {_words(i + 5, 3)}\n```\n"
    )


async def build_data(data_dir: Path, conversations: int, long_messages: int, log: Callable[[str], None]) -> dict:
    """The data folder: ``conversations - 1`` short conversations and one of ``long_messages`` messages, built
    through the chat graph on Cairn's own storage stack (SQLite, no Postgres), as the app would have stored them."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.messages import HumanMessage

    from chat.graph import ChatContext, build_chat_graph
    from chat.state import with_id
    from storage.manager import StorageManager
    from storage.tiered import TieredSaver

    manager = StorageManager(data_dir=data_dir)
    await manager.start()
    try:
        saver = TieredSaver(manager)
        graph = build_chat_graph(saver)

        async def turn(thread: str, i: int) -> None:
            model = FakeListChatModel(responses=[reply_text(i)])
            context = ChatContext(lambda: model)
            config = {"configurable": {"thread_id": thread}}
            await graph.ainvoke({"messages": [with_id(HumanMessage(user_text(i)))]}, config, context=context)

        started = time.perf_counter()
        short: list[str] = []
        for n in range(conversations - 1):
            thread = f"short-{n:04d}"
            await turn(thread, n)
            await manager.update_conversation(thread, title=f"Conversation {n}: {_words(n, 4)}")
            short.append(thread)
        log(f"  {conversations - 1} short conversations in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        long_thread = "long-conversation"
        for i in range(long_messages // 2):
            await turn(long_thread, i)
        await manager.update_conversation(long_thread, title="A conversation of 1,000 messages")
        log(f"  one conversation of {long_messages} messages in {time.perf_counter() - started:.0f} s")
        return {"long": long_thread, "short": short[-1]}
    finally:
        await manager.close()


# --- Postgres that never answers ----------------------------------------------------------------------------------


class SilentPostgres:
    """A Postgres URL whose host accepts connections and never answers (``TcpProxy.blackhole``)."""

    def __init__(self, use_cluster: bool) -> None:
        from tests.support.netproxy import TcpProxy

        self.cluster: Any = None
        if use_cluster:
            from tests.support.pgcluster import PgCluster

            self.cluster = PgCluster()
            host, port = self.cluster.host, self.cluster.port
            self.behind = "a throwaway PgCluster"
        else:
            with socket.socket() as probe:  # a port where nothing listens
                probe.bind(("127.0.0.1", 0))
                host, port = probe.getsockname()
            self.behind = "a closed port"
        self.proxy = TcpProxy(host, port)
        self.proxy.blackhole()
        self.url = f"postgresql://postgres@127.0.0.1:{self.proxy.port}/cairn"

    def describe(self) -> str:
        return f"configured, black-holed (`TcpProxy.blackhole()` in front of {self.behind})"

    def close(self) -> None:
        self.proxy.close()
        if self.cluster is not None:
            self.cluster.close()


# --- the model server, in its own process (its token writing must not share our interpreter's lock) ---------------

SERVER_CODE = """
import json, sys
from tests.support.model_server import ModelServer
replies = json.loads(sys.argv[1])
server = ModelServer(token_delay=float(sys.argv[2])).start()
print(server.base_url, flush=True)
for line in sys.stdin:  # the reply to give from now on: "plain" (token_count) or "markdown" (explicit tokens)
    kind = line.strip()
    server.token_count, server.reply = (replies[kind], None) if kind == "plain" else (None, replies[kind])
    print("ok", flush=True)
server.close()
"""


def markdown_reply(tokens: int) -> list[str]:
    """A long reply as a model writes one: headings, paragraphs, lists, code blocks and a table; ``tokens`` words."""
    from tests.support.model_server import tokenize

    parts = []
    n = 0
    while True:
        parts += [
            f"## Part {n}: {_words(n, 3)}\n\n",
            f"{_words(n, 40)}, with **{_words(n + 1, 2)}** and `{_words(n + 2, 1)}`.\n\n",
            f"1. {_words(n + 3, 9)}\n2. {_words(n + 4, 7)}\n   - {_words(n + 5, 6)}\n3. {_words(n + 6, 8)}\n\n",
            "```python\n"
            + "".join(
                f"def step_{n}_{i}(value):\n    return value * {i} + {n}  # {_words(n + i, 3)}\n" for i in range(6)
            )
            + "```\n\n",
            f"| {_words(n, 1)} | {_words(n + 1, 1)} |\n|---|---|\n| {_words(n + 2, 2)} | {_words(n + 3, 2)} |\n\n",
            f"{_words(n + 7, 60)}.\n\n",
        ]
        found = tokenize("".join(parts))
        if len(found) >= tokens:
            return found[:tokens]
        n += 1


class ModelServerProcess:
    """``tests.support.model_server.ModelServer`` in a child process; ``use(kind)`` picks the reply of the next
    requests."""

    def __init__(self, tokens: int, delay: float) -> None:
        replies = {"plain": tokens, "markdown": markdown_reply(tokens)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, json.dumps(replies), str(delay)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()
        self.use("plain")

    def use(self, kind: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(kind + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok"

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def write_settings(config_dir: Path, data_dir: Path, model_url: str, postgres_url: str) -> None:
    from storage.secrets import SecretStore
    from storage.settings import save_settings
    from tests.support.keyring_backend import MemoryKeyring

    save_settings(
        {
            "MODEL_BASE_URL": model_url,
            "MODEL_NAME": "test-model",
            "CAIRN_DATA_DIR": str(data_dir),
            "POSTGRES_DATABASE_URL": postgres_url,
        },
        config_dir=config_dir,
        secrets=SecretStore(backend=MemoryKeyring()),
    )


# --- first paint and idle memory: `main.py` in a fresh process ----------------------------------------------------

CHILD_CODE = """
import asyncio, json, sys, time
import main as cairn_main
import gui.app as gui_app
from PySide6.QtWidgets import QApplication

first_paint = gui_app._first_paint
async def reporting_first_paint(window):
    await first_paint(window)
    print("PAINT", time.time(), flush=True)
gui_app._first_paint = reporting_first_paint

start = gui_app.CairnApp.start
async def reporting_start(self):
    window = await start(self)
    print("TIMINGS", json.dumps(self.timings), flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    print("RSS", rss * 1024, flush=True)
    QApplication.instance().quit()
    return window
gui_app.CairnApp.start = reporting_start
sys.exit(cairn_main.main([]))
"""


@dataclass
class ProcessRun:
    paint_ms: float
    rss_mb: float
    timings: dict[str, float]


def start_process(config_dir: Path) -> ProcessRun:
    env = {**os.environ, "CAIRN_CONFIG_DIR": str(config_dir), "QT_QPA_PLATFORM": "offscreen"}
    for key in ("POSTGRES_DATABASE_URL", "MODEL_BASE_URL", "MODEL_NAME", "CAIRN_DATA_DIR"):
        env.pop(key, None)
    started = time.time()
    process = subprocess.run(
        [sys.executable, "-c", CHILD_CODE, str(IDLE_SECONDS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    found: dict[str, str] = {}
    for line in process.stdout.splitlines():
        key, _, value = line.partition(" ")
        found[key] = value
    if process.returncode != 0 or "PAINT" not in found or "RSS" not in found:
        raise RuntimeError(f"main.py failed ({process.returncode}):\n{process.stdout}\n{process.stderr[-3000:]}")
    return ProcessRun(
        (float(found["PAINT"]) - started) * 1000, int(found["RSS"]) / 2**20, json.loads(found.get("TIMINGS", "{}"))
    )


# --- in the app: opening and streaming ------------------------------------------------------------------------------


@dataclass
class Send:
    gaps: list[float]  # ms
    phase_max: dict[str, float]  # ms: "start" (Enter → first token shown), "stream", "end" (last token → finished)
    total_s: float
    first_token_ms: float

    @property
    def p99(self) -> float:
        gaps = sorted(self.gaps)
        return gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]

    @property
    def max(self) -> float:
        return max(self.gaps)


REPLIES = {"plain": "a plain reply (one paragraph of filler words)", "markdown": "a Markdown reply"}


@dataclass
class AppResults:
    opens_ms: list[float] = field(default_factory=list)
    open_split: list[tuple[float, float]] = field(default_factory=list)  # (load ms, render ms) per open
    sends: dict[str, list[Send]] = field(default_factory=dict)  # reply kind -> its sends


class Ticker:
    """A 5 ms precise Qt timer; every tick's time is kept (the gaps are what the loop could not run)."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    def max_gap_between(self, start: float, stop: float) -> float:
        gaps = [b - a for a, b in zip(self.ticks, self.ticks[1:], strict=False) if b > start and a < stop]
        return max(gaps, default=0.0) * 1000


class StallSampler:
    """Where the loop's thread is while the loop stalls: a watcher thread samples the main thread's Python stack
    whenever the ticker has not ticked for ``threshold_ms`` (``--stalls``; a diagnosis aid, not a measure)."""

    def __init__(self, ticker: Ticker, threshold_ms: float = 15.0) -> None:
        import gc
        import threading

        self.ticker = ticker
        self.threshold = threshold_ms / 1000
        self.samples: list[tuple[float, tuple[str, ...]]] = []  # (the last tick before the stall, the stack)
        self._main = threading.main_thread().ident
        self._running = True
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)
        self.collections: list[tuple[float, float, int]] = []  # (start, ms, generation) of each slow collection
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)
        self._thread.start()

    def _run(self) -> None:
        import traceback

        while self._running:
            time.sleep(0.002)
            ticks = self.ticker.ticks
            if not ticks or not self.ticker.timer.isActive():
                continue
            last = ticks[-1]
            if time.perf_counter() - last < self.threshold:
                continue
            frame = sys._current_frames().get(self._main)
            if frame is None:
                continue
            stack = tuple(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-40:])
            self.samples.append((last, stack))

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


class PaintWatch:
    """Sets ``future`` to the time of the first paint event ``widget`` receives once ``armed``."""

    def __init__(self, widget: Any, future: asyncio.Future[float]) -> None:
        from PySide6.QtCore import QEvent, QObject

        self.armed = False
        watch = self

        class Filter(QObject):
            def eventFilter(self, _watched: Any, event: Any) -> bool:
                if watch.armed and event.type() == QEvent.Type.Paint and not future.done():
                    future.set_result(time.perf_counter())
                return False

        self.filter = Filter()
        self.widget = widget
        widget.installEventFilter(self.filter)

    def remove(self) -> None:
        self.widget.removeEventFilter(self.filter)


def click(widget: Any, pos: Any) -> None:
    """A left click, delivered at once: the tests' own (QTest's clicks may spin a nested loop)."""
    from tests.support.app import click_at

    click_at(widget, pos)


async def open_by_click(window: Any, thread: str) -> float:
    """Click the conversation in the list; milliseconds until the view has painted it."""
    sidebar = window.sidebar
    item = sidebar.item_for(thread)
    assert item is not None, f"{thread} is not in the list"
    sidebar.list.scrollToItem(item)
    await asyncio.sleep(0.1)  # the scroll is painted before the clock starts
    rect = sidebar.list.visualItemRect(item)
    painted: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    watch = PaintWatch(window.view.viewport(), painted)

    def shown(thread_id: str) -> None:  # from now on, the view's next paint shows the conversation
        if thread_id == thread:
            watch.armed = True

    window.conversationShown.connect(shown)
    try:
        started = time.perf_counter()
        click(sidebar.list.viewport(), rect.center())
        async with asyncio.timeout(30):
            done = await painted
    finally:
        window.conversationShown.disconnect(shown)
        watch.remove()
    return (done - started) * 1000


async def send_message(window: Any, text: str, *, stalls: bool = False) -> Send:
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
    finished = asyncio.ensure_future(wait_signal(window.replyFinished, lambda t: t == thread, 300))
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
    gaps = [(b - a) * 1000 for a, b in zip(ticker.ticks, ticker.ticks[1:], strict=False)]
    first, last = marks.get("first", ended), marks.get("last", ended)
    phases = {
        "start": ticker.max_gap_between(started, first),
        "stream": ticker.max_gap_between(first, last),
        "end": ticker.max_gap_between(last, ended),
    }
    return Send(gaps, phases, ended - started, (first - started) * 1000)


def run_app(
    config_dir: Path,
    threads: dict,
    server: ModelServerProcess,
    opens: int,
    sends: int,
    log: Callable[[str], None],
    *,
    stalls: bool = False,
) -> AppResults:
    from PySide6.QtWidgets import QApplication

    from gui import tuning
    from gui.app import CairnApp, configure
    from storage.loop import new_qt_loop
    from storage.secrets import SecretStore
    from storage.settings import load_settings
    from tests.support.keyring_backend import MemoryKeyring

    app = QApplication.instance() or QApplication(["cairn-bench"])
    assert isinstance(app, QApplication)
    configure(app)
    tuning.tune_interpreter()  # measured as the app runs (gui.app.run does the same)
    app.setQuitOnLastWindowClosed(False)
    loop = new_qt_loop(app)
    asyncio.set_event_loop(loop)
    settings = load_settings(environ={}, cwd=config_dir, config_dir=config_dir, strict=False)
    cairn = CairnApp(app, settings=settings, secrets=SecretStore(backend=MemoryKeyring()))
    results = AppResults()

    async def main() -> None:
        try:
            window = await cairn.start()
            tuning.freeze_startup_objects()
            window.activateWindow()
            await asyncio.sleep(1.0)  # the list is filled, the first Postgres attempt is under way
            for n in range(opens):
                results.opens_ms.append(await open_by_click(window, threads["long"]))
                results.open_split.append(window.last_open_timing)
                log(
                    f"  open {n + 1}: {results.opens_ms[-1]:.0f} ms (load, render: "
                    f"{window.last_open_timing[0]:.0f}, {window.last_open_timing[1]:.0f} ms)"
                )
                await open_by_click(window, threads["short"])
            await open_by_click(window, threads["long"])
            for kind in REPLIES:
                server.use(kind)
                for n in range(sends):
                    send = await send_message(window, f"Send {n}: a question about the **loop**?", stalls=stalls)
                    results.sends.setdefault(kind, []).append(send)
                    log(
                        f"  send {n + 1} ({kind}): {send.total_s:.1f} s, first token after "
                        f"{send.first_token_ms:.0f} ms, p99 {send.p99:.1f} ms, max {send.max:.0f} ms "
                        f"(start {send.phase_max['start']:.0f}, stream {send.phase_max['stream']:.0f}, "
                        f"end {send.phase_max['end']:.0f})"
                    )
        finally:
            app.aboutToQuit.emit()
            await cairn.shutdown()
            if cairn.window is not None:
                cairn.window.close()
                cairn.window.deleteLater()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return results


# --- the report -------------------------------------------------------------------------------------------------


def versions() -> str:
    names = ("PySide6-Essentials", "qasync", "langgraph", "langchain-openai", "openai", "markdown-it-py")
    return report_versions(names)


def row(key: str, value: float, detail: str, suffix: str = "") -> str:
    target = TARGETS[key]
    verdict = "PASS" if value <= target.limit else "**FAIL**"
    number = f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return (
        f"| {target.name}{suffix} | {number} {target.unit} | ≤ {target.limit:g} {target.unit} | {verdict} | {detail} |"
    )


def table(app: AppResults, processes: Sequence[ProcessRun]) -> str:
    lines = ["| measure | median | target | result | detail |", "|---|---|---|---|---|"]
    for kind, sends in app.sends.items():
        p99s = [s.p99 for s in sends]
        maxes = [s.max for s in sends]
        phases = {k: statistics.median(s.phase_max[k] for s in sends) for k in ("start", "stream", "end")}
        suffix = f" — {REPLIES[kind]}"
        lines.append(row("p99", statistics.median(p99s), f"{_count(p99s, 'send')}: {_list(p99s, 1)} ms", suffix))
        lines.append(
            row(
                "max",
                statistics.median(maxes),
                f"{_count(maxes, 'send')}: {_list(maxes)} ms; worst gap by phase (median): start {phases['start']:.0f},"
                f" streaming {phases['stream']:.0f}, end {phases['end']:.0f} ms",
                suffix,
            )
        )
    if processes:
        paints = [p.paint_ms for p in processes]
        lines.append(row("paint", statistics.median(paints), f"{_count(paints, 'process')}: {_list(paints)} ms"))
    if app.opens_ms:
        loads = statistics.median(s[0] for s in app.open_split)
        renders = statistics.median(s[1] for s in app.open_split)
        lines.append(
            row(
                "open",
                statistics.median(app.opens_ms),
                f"{_count(app.opens_ms, 'open')}: {_list(app.opens_ms)} ms; median load {loads:.0f} ms,"
                f" render {renders:.0f} ms (the rest: list click, layout, paint)",
            )
        )
        load, render = app.open_split[0]
        lines.append(row("cold", app.opens_ms[0], f"load {load:.0f} ms, render {render:.0f} ms"))
    if processes:
        rss = [p.rss_mb for p in processes]
        lines.append(row("rss", statistics.median(rss), f"{_count(rss, 'process')}: {_list(rss)} MB"))
    return "\n".join(lines)


def _count(values: Sequence[float], noun: str) -> str:
    return f"{len(values)} {noun}" + ("" if len(values) == 1 else "es" if noun.endswith("s") else "s")


def _list(values: Sequence[float], digits: int = 0) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def report(app: AppResults, processes: Sequence[ProcessRun], *, seconds: float, postgres: str, load: tuple) -> str:
    first_tokens = "; ".join(f"{kind}: {_list([s.first_token_ms for s in sends])}" for kind, sends in app.sends.items())
    startup = {}
    for key in ("settings", "secrets", "window", "first paint", "storage", "chat engine", "ready"):
        values = [p.timings[key] for p in processes if key in p.timings]
        if values:
            startup[key] = statistics.median(values)
    steps = ", ".join(f"{k} {v:.0f} ms" for k, v in startup.items())
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{COMMAND}` — run {datetime.date.today().isoformat()}, {seconds / 60:.1f} min.",
            f"Machine: {machine()}. Load average {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
            f"Packages: {versions()}.",
            "",
            f"The real app (`CairnApp`, `MainWindow`, selector qasync loop, offscreen Qt) on a SQLite data folder of"
            f" {CONVERSATIONS:,} conversations (one of them {LONG_MESSAGES:,} messages, built turn by turn through"
            f" the chat graph); Postgres {postgres}; `tests.support.model_server.ModelServer` in its own process"
            " streaming"
            f" {TOKENS:,} tokens at {1 / TOKEN_DELAY:.0f} tokens/s, either one paragraph of filler words or Markdown"
            " (headings, lists, code blocks, tables). Stall: gaps of a "
            f"{TICK_MS} ms `PreciseTimer` over a whole send"
            " into the 1,000-message conversation (Enter → reply stored, reloaded and listed)."
            " First paint and RSS: `main.py` in a fresh process (RSS 3 s after the chat engine loaded).",
            "",
            table(app, processes),
            "",
            f"- First token shown after (ms, per send): {first_tokens}.",
            f"- Start-up steps of `main.py` (median, ms since `CairnApp` was built): {steps}.",
            "",
            comparison(app, processes),
            "",
        ]
    )


BEFORE = {  # this benchmark on the code before the fixes below (2026-11-25, this machine): medians
    "p99 plain": "9.5 ms",
    "max plain": "187 ms (at the start of the send)",
    "p99 markdown": "21.5 ms",
    "max markdown": "196 ms (at the start; 177 ms at the end of one send)",
    "open": "40 ms",
    "cold": "178 ms (load 135 ms)",
    "paint": "688 ms (the fixes do not touch start-up; runs vary with the machine's load)",
    "rss": "222 MB",
}

CHANGES = """\
- **The model call runs on its own thread** (`chat/offload.py`): langchain-openai and the openai SDK converted and
  validated the 1,000-message history on the loop in one piece (180 ms in `openai._utils._transform`), and built the
  HTTP client and its SSL context on the first send (35 ms). The graph and its checkpointer stay on the loop (the
  storage backends are bound to it); tokens reach the graph's stream through LangGraph's thread-safe handler, and
  Stop cancels the call on the model thread, which closes the HTTP stream.
- **The objects of start-up are frozen out of the garbage collector** (`gc.freeze()` once the chat engine is
  loaded): each full collection walked the ~170,000 objects of the imported libraries, 40–75 ms with the loop
  stopped, whenever enough new objects had piled up, as on the first load of a long conversation (most of its 135 ms)
  or in the middle of a send.
- **The interpreter's switch interval is 1 ms** (`sys.setswitchinterval`): while the model thread (or the chat
  engine's import) is busy, each of the loop's entries into Python could wait 5 ms for the interpreter lock.
- **A streaming reply re-renders only its unfinished tail** (`gui.chat_view.StableSplit`): the Markdown blocks
  before the last point that nothing appended can change are rendered once. Re-rendering the whole reply at every
  flush cost up to 30 ms per flush at 30 KB, and made the p99 gap of a Markdown reply 21 ms.
- **Less is redone when a reply ends**: the finished reply is rendered once instead of twice, moving the Regenerate
  link rewrites one line instead of a whole message, and a list refresh that brings the same conversations updates
  the items that changed instead of rebuilding 1,000 (about 20 ms each time)."""


def comparison(app: AppResults, processes: Sequence[ProcessRun]) -> str:
    now: dict[str, str] = {}
    for kind, sends in app.sends.items():
        now[f"p99 {kind}"] = f"{statistics.median(s.p99 for s in sends):.1f} ms"
        now[f"max {kind}"] = f"{statistics.median(s.max for s in sends):.0f} ms"
    if app.opens_ms:
        now["open"] = f"{statistics.median(app.opens_ms):.0f} ms"
        now["cold"] = f"{app.opens_ms[0]:.0f} ms (load {app.open_split[0][0]:.0f} ms)"
    if processes:
        now["paint"] = f"{statistics.median(p.paint_ms for p in processes):.0f} ms"
        now["rss"] = f"{statistics.median(p.rss_mb for p in processes):.0f} MB"
    names = {
        "p99 plain": "p99 gap, plain reply",
        "max plain": "max gap, plain reply",
        "p99 markdown": "p99 gap, Markdown reply",
        "max markdown": "max gap, Markdown reply",
        "open": "open a 1,000-message conversation",
        "cold": "… the first open after start",
        "paint": "first paint",
        "rss": "idle RSS",
    }
    lines = [
        "### Before and after the fixes of November 2026",
        "",
        "| measure | before the fixes | this run |",
        "|---|---|---|",
        *(f"| {names[key]} | {BEFORE[key]} | {now.get(key, 'not run')} |" for key in names),
        "",
        CHANGES,
    ]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    """Replace the "## UI" section of docs/PERFORMANCE.md (other sections are kept)."""
    headings = "".join(f"{heading}\n\n{note}\n\n" for heading, note in OTHER_SECTIONS)
    write_section(SECTION, section, new_file="# Performance\n\n" + headings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.ui", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="update the UI section of docs/PERFORMANCE.md")
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke run)")
    parser.add_argument("--pgcluster", action="store_true", help="black-hole a throwaway PgCluster, not a closed port")
    parser.add_argument("--data", type=Path, help="reuse (or build once into) this data folder")
    parser.add_argument("--stalls", action="store_true", help="print where the loop's thread was during each stall")
    parser.add_argument("--only", choices=("app", "process"), help="run only the in-app or the process measures")
    args = parser.parse_args(argv)
    runs = 2 if args.quick else 5
    sends = 1 if args.quick else 3

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-ui-"))
    postgres: SilentPostgres | None = None
    try:
        template = args.data or work / "template"
        marker = template / "bench-threads.json"
        if marker.exists():
            threads = json.loads(marker.read_text())
            log(f"reusing the data in {template}")
        else:
            log(f"building {CONVERSATIONS:,} conversations in {template}")
            from storage.loop import run

            threads = run(build_data(template, CONVERSATIONS, LONG_MESSAGES, log))
            marker.write_text(json.dumps(threads))
        postgres = SilentPostgres(args.pgcluster)
        processes: list[ProcessRun] = []
        app = AppResults()
        server = ModelServerProcess(TOKENS, TOKEN_DELAY)
        model_url = server.base_url
        try:
            if args.only != "app":
                for n in range(runs):
                    config, data = work / f"process-{n}" / "config", work / f"process-{n}" / "data"
                    shutil.copytree(template, data, ignore=shutil.ignore_patterns("bench-threads.json"))
                    write_settings(config, data, model_url, postgres.url)
                    processes.append(start_process(config))
                    log(
                        f"  process {n + 1}: first paint {processes[-1].paint_ms:.0f} ms, "
                        f"idle RSS {processes[-1].rss_mb:.0f} MB"
                    )
            if args.only != "process":
                config, data = work / "app" / "config", work / "app" / "data"
                shutil.copytree(template, data, ignore=shutil.ignore_patterns("bench-threads.json"))
                write_settings(config, data, model_url, postgres.url)
                app = run_app(config, threads, server, runs, sends, log, stalls=args.stalls)
        finally:
            server.close()
        section = report(
            app,
            processes,
            seconds=time.perf_counter() - started,
            postgres=postgres.describe(),
            load=(load_start[0], os.getloadavg()[0]),
        )
        print(section)
        if args.write:
            write_docs(section)
            log(f"updated {DOCS.relative_to(ROOT)}")
        return 0
    finally:
        if postgres is not None:
            postgres.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
