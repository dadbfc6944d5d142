"""The Qt Quick prototype of the chat view (gui/conversation) against today's QTextBrowser ChatView, in one run.

Usage::

    /work/main/.venv/bin/python -m bench.chat_view_proto            # the table (about 6 minutes on 2 cores)
    /work/main/.venv/bin/python -m bench.chat_view_proto --quick    # fewer runs (a smoke run)

Three views, measured alternately in the same process (so the machine's load hits them alike), each in its own
1000×800 top-level window, offscreen (``QT_QPA_PLATFORM=offscreen``; Qt Quick then renders with its software
renderer on the GUI thread, see gui/conversation/view.py):

- ``textbrowser``: ``gui.chat_view.ChatView``, the view of today;
- ``quick-widget``: ``gui.conversation.view.ConversationView`` in a ``QQuickWidget``;
- ``quick-window``: the same QML in a ``QQuickView`` inside ``QWidget.createWindowContainer``;
- ``quick-selectable`` (only with ``--kinds``): ``quick-widget`` with text blocks the mouse can select in.

Measures, median of several runs:

- Open: ``show_conversation`` of 1,000 and of 5,000 messages (bench.ui's messages: a 200-character question, a
  300-character Markdown answer with a list and a code block) until the view's first frame showing them (a paint
  event of the QTextBrowser's viewport; the Qt Quick scene's ``afterRendering`` for the widget, ``frameSwapped``
  for the window). A two-message conversation is opened in between, so each open is a real one. These were opened
  before (what each view caches of a message's rendering is warm, as when the user goes back to a conversation);
  1,000 messages never shown before are opened too (nothing cached).
- Streaming: into the open 1,000-message conversation, 2,000 tokens at 200 tokens/s, fed **in-process** by a 5 ms
  ``PreciseTimer`` that appends every token due by the clock (not the app's model server, chat service and storage:
  only the view's share of the work is measured). Replies: one paragraph of filler words (``plain``), bench.ui's
  Markdown reply (``markdown``), and one 200 KB Python code block (``code``, 2,000 slices of about 100 characters).
  Loop gaps: a second 5 ms ``PreciseTimer`` ticking from the first token until the frame after ``finish_reply``;
  p99 and max of the gaps per reply, and the worst gap after the last token (``end``: the reply rendered final).
- Process: a fresh process per view (``--child``) imports Qt and the view, builds a window showing the 1,000-message
  conversation, and reports the import time of the view's modules, the time from spawn to the first frame showing
  the conversation, and its RSS after 2 s idle. Not the whole app: the difference between the views is what counts.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from bench.report import machine  # noqa: E402
from bench.report import versions as report_versions  # noqa: E402
from bench.ui import code_reply, markdown_reply, reply_text, user_text  # noqa: E402

KINDS = ("textbrowser", "quick-widget", "quick-window")
OPTIONAL_KINDS = ("quick-selectable",)  # --kinds: QQuickWidget with selectable (TextEdit) text blocks
TOKENS = 2_000
TOKEN_DELAY = 0.005
TICK_MS = 5
SIZE = (1000, 800)
COMMAND = "/work/main/.venv/bin/python -m bench.chat_view_proto"


@dataclass(frozen=True)
class Message:
    id: str
    role: str
    text: str
    stopped: bool = False


def conversation(count: int, prefix: str = "m") -> list[Message]:
    return [
        Message(f"{prefix}{i}", "user", user_text(i))
        if i % 2 == 0
        else Message(f"{prefix}{i}", "assistant", reply_text(i))
        for i in range(count)
    ]


def replies() -> dict[str, list[str]]:
    from tests.support.model_server import filler_tokens

    return {"plain": filler_tokens(TOKENS), "markdown": markdown_reply(TOKENS), "code": code_reply()}


# --- one view in its window -----------------------------------------------------------------------------------------


class Subject:
    """A view of one kind in its own window, with a way to wait for its next frame."""

    def __init__(self, kind: str) -> None:
        from PySide6.QtWidgets import QVBoxLayout, QWidget

        self.kind = kind
        self.window = QWidget()
        self.window.setWindowTitle(kind)
        layout = QVBoxLayout(self.window)
        layout.setContentsMargins(0, 0, 0, 0)
        if kind == "textbrowser":
            from gui.chat_view import ChatView

            self.view: Any = ChatView()
        else:
            from gui.conversation.view import ConversationView

            embed = "window" if kind == "quick-window" else "widget"
            self.view = ConversationView(embed=embed, selectable=kind == "quick-selectable")
        layout.addWidget(self.view)
        self.window.resize(*SIZE)
        self.window.show()
        self._armed: Callable[[], None] | None = None
        if kind == "textbrowser":
            from PySide6.QtCore import QEvent, QObject

            subject = self

            class Filter(QObject):
                def eventFilter(self, _watched: Any, event: Any) -> bool:
                    if event.type() == QEvent.Type.Paint:
                        subject._frame()
                    return False

            self._filter = Filter()
            self.view.viewport().installEventFilter(self._filter)
        elif kind != "quick-window":  # QQuickWidget: its software frames emit no frameSwapped
            self.view.quick_window().afterRendering.connect(self._frame)
        else:
            self.view.quick_window().frameSwapped.connect(self._frame)

    def _frame(self) -> None:
        if self._armed is not None:
            done, self._armed = self._armed, None
            done()

    def next_frame(self, timeout_s: float = 30.0) -> float:
        """Run the event loop until the view's next frame; returns its time (perf_counter)."""
        from PySide6.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        found: list[float] = []

        def done() -> None:
            found.append(time.perf_counter())
            loop.quit()

        self._armed = done
        QTimer.singleShot(round(timeout_s * 1000), loop.quit)
        loop.exec()
        self._armed = None
        if not found:
            raise RuntimeError(f"{self.kind}: no frame within {timeout_s} s")
        return found[0]

    def open(self, messages: Sequence[Message], thread: str) -> float:
        """Milliseconds from ``show_conversation`` to the first frame showing the conversation."""
        started = time.perf_counter()
        self.view.show_conversation(thread, messages)
        painted = self.next_frame()
        self.check_end(messages[-1].id)
        return (painted - started) * 1000

    def check_end(self, last_id: str) -> None:
        """The frame shows the end of the conversation (a benchmark of the wrong thing would be worthless)."""
        if self.kind == "textbrowser":
            bar = self.view.verticalScrollBar()
            assert bar.value() == bar.maximum(), f"{self.kind}: not at the end"
            assert self.view.messages()[-1].id == last_id
            return
        items = self.view.list_item()
        assert items.property("atYEnd"), f"{self.kind}: not at the end"
        assert self.view.model.entries[-1].id == last_id

    def close(self) -> None:
        self.window.close()
        self.window.deleteLater()


def wait(ms: int) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


@dataclass
class Stream:
    gaps: list[float]
    end_max: float
    flushes: int
    worst_cpu: float  # ms of CPU the loop's thread used during the longest gap (the rest: it was not running)

    @property
    def p99(self) -> float:
        gaps = sorted(self.gaps)
        return gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]

    @property
    def max(self) -> float:
        return max(self.gaps)


def stream(subject: Subject, tokens: Sequence[str], n: int) -> Stream:
    """Stream ``tokens`` at 200/s into the open conversation; the loop's gaps until the final frame."""
    from PySide6.QtCore import QEventLoop, Qt, QTimer

    view = subject.view
    view.append_message(Message(f"q{n}", "user", f"Send {n}: a question about the **loop**?"))
    wait(200)
    flushes_before = view.flush_count
    ticks: list[float] = []
    cpu: list[float] = []

    def tick() -> None:
        ticks.append(time.perf_counter())
        cpu.append(time.thread_time())

    ticker = QTimer()
    ticker.setTimerType(Qt.TimerType.PreciseTimer)
    ticker.setInterval(TICK_MS)
    ticker.timeout.connect(tick)
    feeder = QTimer()
    feeder.setTimerType(Qt.TimerType.PreciseTimer)
    feeder.setInterval(TICK_MS)
    loop = QEventLoop()
    state = {"sent": 0, "last": 0.0}
    view.begin_reply()
    started = time.perf_counter()

    def feed() -> None:
        due = min(len(tokens), int((time.perf_counter() - started) / TOKEN_DELAY) + 1)
        for token in tokens[state["sent"] : due]:
            view.append_tokens(token)
        state["sent"] = due
        if due == len(tokens):
            feeder.stop()
            state["last"] = time.perf_counter()
            view.finish_reply(Message(f"r{n}", "assistant", "".join(tokens)))
            subject._armed = loop.quit

    feeder.timeout.connect(feed)
    tick()
    ticker.start()
    feeder.start()
    loop.exec()
    wait(100)  # what the final frame left behind (a layout, a deferred delete) counts too
    ticker.stop()
    tick()
    text = "".join(tokens)
    last = view.messages()[-1]
    assert last.text == text, f"{subject.kind}: the reply shown is not the reply sent"
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(ticks)]
    end = [(b - a) * 1000 for a, b in itertools.pairwise(ticks) if b > state["last"]]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    return Stream(gaps, max(end, default=0.0), view.flush_count - flushes_before, (cpu[worst + 1] - cpu[worst]) * 1000)


# --- a fresh process per view: import cost, first frame, RSS ------------------------------------------------------

CHILD = "--child"


def child(kind: str) -> int:
    """Runs in the fresh process: import, window, the 1,000-message conversation, first frame, then RSS."""
    started = time.perf_counter()
    from PySide6.QtWidgets import QApplication

    qt_ms = (time.perf_counter() - started) * 1000
    _app = QApplication([])
    before = time.perf_counter()
    if kind == "textbrowser":
        import gui.chat_view
    else:
        import gui.conversation.view  # noqa: F401
    import_ms = (time.perf_counter() - before) * 1000
    messages = conversation(1000)
    made = time.perf_counter()
    subject = Subject(kind)
    window_ms = (time.perf_counter() - made) * 1000
    subject.view.show_conversation("long", messages)
    subject.next_frame()
    painted = time.time()
    subject.check_end(messages[-1].id)
    wait(2000)
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "painted": painted,
                "qt_ms": qt_ms,
                "import_ms": import_ms,
                "window_ms": window_ms,
                "rss_mb": rss / 1024,
                "peak_mb": peak / 1024,
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)  # no teardown: destroying a QQuickView's scene after its window container can crash on exit


@dataclass
class Process:
    paint_ms: float
    import_ms: float
    window_ms: float
    rss_mb: float


def spawn(kind: str) -> Process:
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "bench.chat_view_proto", CHILD, kind],
        cwd=ROOT,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return Process((found["painted"] - started) * 1000, found["import_ms"], found["window_ms"], found["rss_mb"])


# --- the run --------------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(values: Sequence[float], digits: int = 0) -> str:
    return f"{median(values):.{digits}f} ({', '.join(f'{v:.{digits}f}' for v in values)})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chat_view_proto", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke run)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which views, comma-separated")
    parser.add_argument("--only", choices=("open", "stream", "process"), help="one group of measures")
    parser.add_argument(CHILD, dest="child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    kinds = args.kinds.split(",")
    runs = 2 if args.quick else 5
    stream_runs = 1 if args.quick else 3

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    load = [os.getloadavg()[0]]
    began = time.perf_counter()
    from PySide6.QtWidgets import QApplication

    from gui.app import configure

    app = QApplication.instance() or QApplication(["cairn-bench"])
    assert isinstance(app, QApplication)
    configure(app)
    opens: dict[tuple[str, int], list[float]] = {}
    streams: dict[tuple[str, str], list[Stream]] = {}
    processes: dict[str, list[Process]] = {}
    if args.only in (None, "process"):
        for n in range(runs):
            for kind in kinds:
                found = spawn(kind)
                processes.setdefault(kind, []).append(found)
                log(
                    f"process {n + 1} {kind}: first frame {found.paint_ms:.0f} ms, view import {found.import_ms:.0f}"
                    f" ms, RSS {found.rss_mb:.0f} MB"
                )
    if args.only in (None, "open", "stream"):
        subjects = {kind: Subject(kind) for kind in kinds}
        short = conversation(2, "s")
        sizes = {1000: conversation(1000), 5000: conversation(5000)}
        for subject in subjects.values():  # warm: the first open of a process pays imports and caches
            subject.open(short, "short")
            subject.open(sizes[1000], "warm")
        gc.collect()
        gc.freeze()  # as gui/app.py does once started: full collections do not walk the objects of start-up
        if args.only in (None, "open"):
            for n in range(runs):
                for size, messages in sizes.items():
                    for kind in kinds if n % 2 == 0 else reversed(kinds):
                        subjects[kind].open(short, "short")
                        wait(50)
                        ms = subjects[kind].open(messages, f"long-{size}")
                        opens.setdefault((kind, size), []).append(ms)
                        log(f"open {n + 1} {kind} {size}: {ms:.0f} ms")
                        if size == 1000:  # messages never shown before: nothing rendered is cached
                            subjects[kind].open(short, "short")
                            wait(50)
                            ms = subjects[kind].open(conversation(1000, f"new{n}-{kind}-"), f"new-{n}")
                            opens.setdefault((kind, 0), []).append(ms)
                            log(f"open {n + 1} {kind} 1000 never shown: {ms:.0f} ms")
        if args.only in (None, "stream"):
            texts = replies()
            for n in range(stream_runs):
                for reply, tokens in texts.items():
                    for kind in kinds if n % 2 == 0 else reversed(kinds):
                        subject = subjects[kind]
                        subject.open(sizes[1000], f"stream-{n}")
                        wait(200)
                        found = stream(subject, tokens, n)
                        streams.setdefault((kind, reply), []).append(found)
                        log(
                            f"stream {n + 1} {reply} {kind}: p99 {found.p99:.1f} ms, max {found.max:.0f} ms "
                            f"({found.worst_cpu:.0f} ms CPU), end {found.end_max:.0f} ms, {found.flushes} renders"
                        )
        for subject in subjects.values():
            subject.close()
    load.append(os.getloadavg()[0])
    print(report(kinds, opens, streams, processes, time.perf_counter() - began, load))
    return 0


def report(
    kinds: Sequence[str],
    opens: dict[tuple[str, int], list[float]],
    streams: dict[tuple[str, str], list[Stream]],
    processes: dict[str, list[Process]],
    seconds: float,
    load: Sequence[float],
) -> str:
    lines = [
        f"Command: `{' '.join([COMMAND, *sys.argv[1:]])}` — {seconds / 60:.1f} min.",
        f"Machine: {machine()}. Load average {load[0]:.2f} at the start, {load[-1]:.2f} at the end.",
        f"Packages: {report_versions(('PySide6-Essentials', 'markdown-it-py', 'pygments'))}.",
        "",
        "Medians (each run in brackets), milliseconds unless said otherwise.",
        "",
        "| measure | target | " + " | ".join(kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]

    def add(name: str, target: str, cells: list[str]) -> None:
        lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")

    for size, target in ((1000, "≤ 50"), (0, "≤ 50"), (5000, "≤ 150")):
        if any((k, size) in opens for k in kinds):
            name = f"open {size:,} messages → first frame" if size else "… 1,000 messages never shown before"
            add(name, target, [fmt(opens.get((k, size), [])) for k in kinds])
    targets = {"plain": ("≤ 10", "≤ 33"), "markdown": ("≤ 10", "≤ 33"), "code": ("—", "≤ 50")}
    for reply, (p99_target, max_target) in targets.items():
        if not any((k, reply) in streams for k in kinds):
            continue
        runs = {k: streams.get((k, reply), []) for k in kinds}
        add(f"stream {reply}: p99 gap", p99_target, [fmt([s.p99 for s in runs[k]], 1) for k in kinds])
        add(f"stream {reply}: max gap", max_target, [fmt([s.max for s in runs[k]]) for k in kinds])
        add(
            f"stream {reply}: CPU of the loop's thread in the max gap",
            "",
            [fmt([s.worst_cpu for s in runs[k]]) for k in kinds],
        )
        add(f"stream {reply}: max gap after the last token", "", [fmt([s.end_max for s in runs[k]]) for k in kinds])
        add(f"stream {reply}: renders of the reply", "", [fmt([float(s.flushes) for s in runs[k]]) for k in kinds])
    if processes:
        add(
            "process spawn → first frame of 1,000 messages",
            "",
            [fmt([p.paint_ms for p in processes.get(k, [])]) for k in kinds],
        )
        add(
            "import of the view's modules (after QtWidgets)",
            "",
            [fmt([p.import_ms for p in processes.get(k, [])]) for k in kinds],
        )
        add(
            "building the view (QML load included)",
            "",
            [fmt([p.window_ms for p in processes.get(k, [])]) for k in kinds],
        )
        add("RSS 2 s after the first frame (MB)", "", [fmt([p.rss_mb for p in processes.get(k, [])]) for k in kinds])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
