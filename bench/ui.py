"""How the window feels, against a baseline commit in the same run: loop gaps while a reply streams, opening long
conversations, start-up and idle memory.

Usage::

    .venv/bin/python -m bench.ui --baseline d7c6cb7          # the table (5 minutes on 2 cores, +2 to build the data)
    .venv/bin/python -m bench.ui --baseline d7c6cb7 --write  # and update the "UI" section of docs/PERFORMANCE.md
    .venv/bin/python -m bench.ui --quick                     # fewer runs (a smoke run)
    .venv/bin/python -m bench.ui --stalls                    # also print where the loop's thread was in each stall
    .venv/bin/python -m bench.ui --data DIR                  # build the data once into DIR and reuse it later

Everything is the real thing: ``gui.app.CairnApp`` and its ``MainWindow`` on the selector qasync loop (offscreen
Qt), a real SQLite data folder holding 1,000 conversations (998 of one turn, one of 1,000 messages and one of 5,000,
built turn by turn through the chat graph, so their storage has the shape a real chat leaves: deltas and
snapshots), and Postgres configured but never answering: the URL points at ``tests.support.netproxy.TcpProxy`` in
``blackhole()`` mode (it accepts the connection and then says nothing, like a partitioned network) in front of a
port where nothing listens (or of a throwaway ``tests.support.pgcluster.PgCluster`` with ``--pgcluster``). The
model is ``tests.support.model_server.ModelServer`` in its own process (its writing must not compete with the app
for the interpreter lock), streaming 2,000 tokens at 200 tokens/s (``token_delay=0.005``): one paragraph of filler
words, a Markdown reply with headings, lists, code blocks and tables, or one 200 KB code block (2,000 slices of
about 100 characters); the message sent says which (``[plain]``, ``[markdown]``, ``[code]``).

The checkouts: this one and, with ``--baseline COMMIT``, a ``git worktree`` of that commit (``bench.startup``'s,
sharing this ``.venv``). The harness is this checkout's; the app measured is each checkout's own: every measure runs
in a child process whose working directory is that checkout (``bench/ui_app.py`` for the in-app measures,
``main.py`` for the process ones), the checkouts alternating so the machine's load falls on both alike. This
checkout asks for the cards view with ``CHAT_VIEW=cards`` in its environment (``--view``; where the setting no longer
exists the variable changes nothing); the baseline runs with its own defaults. Which view a window has is read on
``window.view`` (``bench.ui_app.view_kind``) and shown in the table's heading.

- Loop gaps: a 5 ms Qt timer (``PreciseTimer``) ticks on the loop's thread while a message is typed into the
  composer and sent with Enter into the open 1,000-message conversation, until the window says the reply is finished
  (stored, reloaded, the list refreshed). A gap between ticks is time the loop could not run; p99 and max of the
  gaps per send, median over the sends (one of each kind per app process), the CPU time in the worst gap of the
  loop's thread and of the whole process (the loop computing; another thread of the app computing, which holds
  the interpreter lock for a long C call or a garbage collection; or neither: the process waited for a core), and
  the worst gap of each phase (start: Enter → first token shown; streaming; end: last token → finished).
- Open: a click on the conversation in the list until the view's first frame after the window has shown it (the
  text view: a paint event of its viewport; the cards view: its scene's ``afterRendering``); a short conversation
  is opened in between, so each is a real open. The first open of each in an app process is also reported on its
  own: nothing of it is cached yet.
- Start-up and idle RSS: ``main.py`` in a fresh process on a copy of the data (``bench.startup.one_start``: process
  start → first paint, → ready to send), and its resident memory 3 s after it is ready, read from
  ``/proc/PID/smaps`` with where it goes (Qt's libraries, Python's, the heap and other anonymous memory).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/ui.py` as well as `python -m bench.ui`
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from bench.report import machine, write_section  # noqa: E402
from bench.report import versions as report_versions  # noqa: E402
from bench.startup import Start, one_start, worktree  # noqa: E402
from bench.ui_app import BOOT  # noqa: E402

DOCS = ROOT / "docs" / "PERFORMANCE.md"
SECTION = "## UI"
OTHER_SECTIONS = (("## Storage", "Written by `.venv/bin/python -m bench.storage --write`."),)
APP_HARNESS = ROOT / "bench" / "ui_app.py"

CONVERSATIONS = 1_000
LONG_MESSAGES = 1_000
HUGE_MESSAGES = 5_000
TOKENS = 2_000
TOKEN_DELAY = 0.005
CODE_BYTES = 200_000
IDLE_SECONDS = 3.0
KINDS = {
    "plain": "a plain reply (one paragraph of filler words)",
    "markdown": "a Markdown reply",
    "code": "a reply that is one 200 KB code block",
}
SETTING_KEYS = (
    "POSTGRES_DATABASE_URL",
    "MODEL_BASE_URL",
    "MODEL_NAME",
    "CAIRN_DATA_DIR",
    "CAIRN_CONFIG_DIR",
    "CHAT_VIEW",
)


@dataclass(frozen=True)
class Target:
    name: str
    limit: float | None  # None: shown, no target
    unit: str = "ms"


TARGETS = {
    "plain p99": Target("Loop gaps streaming a plain reply: p99", 10),
    "plain max": Target("… max", 33),
    "markdown p99": Target("Loop gaps streaming a Markdown reply: p99", 10),
    "markdown max": Target("… max", 33),
    "code p99": Target("Loop gaps streaming one 200 KB code block: p99", None),
    "code max": Target("… max", 50),
    "open long": Target("Open a 1,000-message conversation (click → first frame)", 50),
    "cold long": Target("… the first time in the process", 50),
    "open huge": Target("Open a 5,000-message conversation", 150),
    "cold huge": Target("… the first time in the process", 150),
    "paint": Target("Process start → first paint", 500),
    "ready": Target("Process start → ready to send", 1500),
    "rss": Target("Idle RSS (3 s after ready)", 220, "MB"),
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


LONG_CONVERSATIONS = {  # key in bench-threads.json: (thread id, messages, title)
    "long": ("long-conversation", LONG_MESSAGES, "A conversation of 1,000 messages"),
    "huge": ("huge-conversation", HUGE_MESSAGES, "A conversation of 5,000 messages"),
}


async def build_data(data_dir: Path, threads: dict[str, str], log: Callable[[str], None]) -> dict[str, str]:
    """The data folder, or what it lacks: short conversations (one turn each) and the long ones, built through
    the chat graph on Cairn's own storage stack (SQLite, no Postgres) turn by turn, as the app would have stored
    them: each turn is a LangGraph run that writes its checkpoints (a delta of the messages, a snapshot of all of
    them every ``SNAPSHOT_EVERY`` updates). A turn takes milliseconds with a canned model (``FakeListChatModel``),
    so the 3,500 turns take about a minute; building the rows directly would be faster but would have to copy
    the saver's layout, which is what the data must not get wrong."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.messages import HumanMessage

    from chat.graph import ChatContext, build_chat_graph
    from chat.state import with_id
    from storage.manager import StorageManager
    from storage.tiered import TieredSaver

    manager = StorageManager(data_dir=data_dir)
    await manager.start()
    threads = dict(threads)
    try:
        saver = TieredSaver(manager)
        graph = build_chat_graph(saver)

        async def turn(thread: str, i: int) -> None:
            model = FakeListChatModel(responses=[reply_text(i)])
            context = ChatContext(lambda: model)
            config = {"configurable": {"thread_id": thread}}
            await graph.ainvoke({"messages": [with_id(HumanMessage(user_text(i)))]}, config, context=context)

        if "short" not in threads:
            started = time.perf_counter()
            shorts = CONVERSATIONS - len(LONG_CONVERSATIONS)
            for n in range(shorts):
                thread = f"short-{n:04d}"
                await turn(thread, n)
                await manager.update_conversation(thread, title=f"Conversation {n}: {_words(n, 4)}")
            threads["short"] = thread
            log(f"  {shorts} short conversations in {time.perf_counter() - started:.0f} s")
        for key, (thread, messages, title) in LONG_CONVERSATIONS.items():
            if key in threads:
                continue
            started = time.perf_counter()
            for i in range(messages // 2):
                await turn(thread, i)
            await manager.update_conversation(thread, title=title)
            threads[key] = thread
            log(f"  one conversation of {messages:,} messages in {time.perf_counter() - started:.0f} s")
        return threads
    finally:
        await manager.close()


def prepare_data(template: Path, log: Callable[[str], None]) -> dict[str, str]:
    """The data folder in ``template``, built once (``bench-threads.json`` lists what it holds)."""
    from storage.loop import run

    marker = template / "bench-threads.json"
    threads = json.loads(marker.read_text()) if marker.exists() else {}
    missing = [k for k in ("short", *LONG_CONVERSATIONS) if k not in threads]
    if not missing:
        log(f"reusing the data in {template}")
        return threads
    log(f"building {', '.join(missing)} in {template}")
    threads = run(build_data(template, threads, log))
    marker.write_text(json.dumps(threads))
    return threads


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
import json, re, sys
from tests.support.model_server import ModelServer, last_user_text
replies = json.loads(sys.stdin.readline())  # 200 KB of code: too long for an argument
def reply(messages):  # the kind of reply the message asks for: "[plain]", "[markdown]" or "[code]"
    found = re.search(r"\\[(\\w+)\\]", last_user_text(messages))
    return replies[found.group(1)] if found else "An answer."
server = ModelServer(reply=reply, token_delay=float(sys.argv[1])).start()
print(server.base_url, flush=True)
sys.stdin.read()
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


def code_reply(tokens: int = TOKENS) -> list[str]:
    """One Python code block of about 200 KB, in ``tokens`` slices (about 100 characters each)."""
    lines = []
    n = 0
    while sum(map(len, lines)) < CODE_BYTES:
        lines.append(f"    value_{n} = compute(value_{n - 1}, {n}, label='step {n} of the loop')  # keep going\n")
        n += 1
    text = "Here is the code:\n\n```python\ndef run():\n" + "".join(lines) + "```\n"
    size = len(text) // tokens + 1
    return [text[i : i + size] for i in range(0, len(text), size)]


def replies(tokens: int = TOKENS) -> dict[str, list[str]]:
    from tests.support.model_server import filler_tokens

    return {"plain": filler_tokens(tokens), "markdown": markdown_reply(tokens), "code": code_reply(tokens)}


class ModelServerProcess:
    """``tests.support.model_server.ModelServer`` in a child process (this checkout's), giving the reply the
    message asks for."""

    def __init__(self, delay: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, str(delay)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(replies()) + "\n")
        self.process.stdin.flush()
        self.base_url = self.process.stdout.readline().strip()

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


# --- the measures: each in a child process of the checkout measured --------------------------------------------


@dataclass
class Checkout:
    name: str  # "this checkout", "baseline d7c6cb7"
    path: Path
    env: dict[str, str]  # settings from the environment of its app processes
    view: str = ""  # "text" or "cards": what its window showed
    starts: list[Start] = field(default_factory=list)
    apps: list[dict[str, Any]] = field(default_factory=list)  # bench.ui_app's results, one per app process

    @property
    def heading(self) -> str:
        return f"{self.name} ({self.view} view)" if self.view else self.name


def child_environ() -> dict[str, str]:
    """This process's environment without Cairn's settings (each child's come from its settings file)."""
    return {**{k: v for k, v in os.environ.items() if k not in SETTING_KEYS}, "QT_QPA_PLATFORM": "offscreen"}


def rss_category(path: str) -> str:
    if not path or path == "[heap]" or path.startswith("[anon"):
        return "heap and anonymous memory (malloc, Python's objects, Qt's allocations, images)"
    if path.startswith("["):
        return "other (stacks, vdso)"
    name = Path(path).name
    if re.search(r"Qt6Quick|Qt6Qml|Qt6OpenGL|QtQuick|QtQml|/qml/", path):
        return "Qt Quick and QML libraries and plugins"
    if re.search(r"Qt6|PySide6|shiboken", name) or "/PySide6/" in path:
        return "other Qt and PySide6 libraries"
    if ".so" in name:
        return "other shared libraries (Python, its extension modules, system)"
    return "other files (fonts, caches)"


def memory(pid: int) -> dict[str, Any]:
    """The process's resident memory (MB) from ``/proc/PID/smaps``: in all, by category, and by file."""
    categories: dict[str, float] = {}
    files: dict[str, float] = {}
    path = ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's first line: range, perms, offset, dev, inode[, path]
                path = fields[5] if len(fields) > 5 else ""
            elif fields[0] == "Rss:":
                mb = int(fields[1]) / 1024
                category = rss_category(path)
                categories[category] = categories.get(category, 0.0) + mb
                key = Path(path).name if path.startswith("/") else path or "[anon]"
                files[key] = files.get(key, 0.0) + mb
    return {"rss": sum(categories.values()), "categories": categories, "files": files}


def start_process(checkout: Checkout, work: Path, template: Path, model_url: str, pg_url: str) -> Start:
    config, data = work / "config", work / "data"
    shutil.copytree(template, data, ignore=shutil.ignore_patterns("bench-threads.json"))
    write_settings(config, data, model_url, pg_url)
    try:
        return one_start(
            checkout.path,
            work,
            env={"CAIRN_CONFIG_DIR": str(config), **checkout.env},
            unset=SETTING_KEYS,
            quit_after=IDLE_SECONDS + 1.5,
            probe=memory,
            probe_after=IDLE_SECONDS,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def app_process(
    checkout: Checkout, work: Path, template: Path, model_url: str, pg_url: str, request: dict[str, Any]
) -> dict[str, Any]:
    """bench/ui_app.py in a child process of ``checkout``: its results."""
    config, data = work / "config", work / "data"
    shutil.copytree(template, data, ignore=shutil.ignore_patterns("bench-threads.json"))
    write_settings(config, data, model_url, pg_url)
    request = {**request, "config_dir": str(config), "env": checkout.env, "label": checkout.name}
    try:
        process = subprocess.run(
            [sys.executable, "-c", BOOT, str(APP_HARNESS), json.dumps(request)],
            cwd=checkout.path,
            env=child_environ(),
            stdout=subprocess.PIPE,
            text=True,
            timeout=1800,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = [line[len("RESULT ") :] for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not found:
        raise RuntimeError(f"the app process in {checkout.path} failed ({process.returncode}):\n{process.stdout}")
    result: dict[str, Any] = json.loads(found[0])
    return result


# --- the report -------------------------------------------------------------------------------------------------


def versions() -> str:
    names = ("PySide6-Essentials", "qasync", "langgraph", "langchain-openai", "openai", "markdown-it-py", "pygments")
    return report_versions(names)


def _list(values: Sequence[float], digits: int = 0) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def values_of(checkout: Checkout, key: str) -> list[float]:
    """Each run's value of a measure, in the order measured."""
    kind, _, what = key.partition(" ")
    if kind in KINDS:
        return [send[what] for app in checkout.apps for send in app["sends"].get(kind, [])]
    if kind in ("open", "cold"):
        opens = [app["opens"].get(what, []) for app in checkout.apps]
        return [o["ms"] for found in opens for o in (found[1:] if kind == "open" else found[:1])]
    if key == "paint":
        return [s.paint_ms for s in checkout.starts]
    if key == "ready":
        return [s.ready_ms for s in checkout.starts]
    if key == "rss":
        return [s.probed["rss"] for s in checkout.starts if s.probed]
    raise KeyError(key)


def cell(target: Target, values: Sequence[float]) -> str:
    if not values:
        return "not run"
    median = statistics.median(values)
    verdict = "" if target.limit is None else " PASS" if median <= target.limit else " **FAIL**"
    return f"{_number(median)}{verdict} ({_list(values, 1 if median < 20 else 0)})"


def table(checkouts: Sequence[Checkout]) -> str:
    lines = [
        "| measure | target | " + " | ".join(c.heading for c in checkouts) + " |",
        "|---|---|" + "---|" * len(checkouts),
    ]
    for key, target in TARGETS.items():
        cells = [cell(target, values_of(c, key)) for c in checkouts]
        if all(c == "not run" for c in cells):
            continue
        limit = "—" if target.limit is None else f"≤ {target.limit:g}"
        lines.append(f"| {target.name} ({target.unit}) | {limit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rss_table(checkouts: Sequence[Checkout]) -> str:
    """Median MB by category of the idle processes of each checkout."""
    measured = [c for c in checkouts if any(s.probed for s in c.starts)]
    if not measured:
        return ""
    categories: list[str] = []
    for c in measured:
        for s in c.starts:
            for name in s.probed["categories"]:
                if name not in categories:
                    categories.append(name)
    lines = [
        "| idle RSS by where it goes (MB, median) | " + " | ".join(c.heading for c in measured) + " |",
        "|---|" + "---:|" * len(measured),
    ]
    for name in sorted(
        categories,
        key=lambda n: -statistics.median(s.probed["categories"].get(n, 0.0) for s in measured[-1].starts if s.probed),
    ):
        medians = [
            statistics.median(s.probed["categories"].get(name, 0.0) for s in c.starts if s.probed) for c in measured
        ]
        lines.append(f"| {name} | " + " | ".join(f"{m:.1f}" for m in medians) + " |")
    totals = [statistics.median(values_of(c, "rss")) for c in measured]
    lines.append("| all | " + " | ".join(f"{t:.1f}" for t in totals) + " |")
    return "\n".join(lines)


def top_files(checkout: Checkout, count: int = 15) -> str:
    runs = [s.probed["files"] for s in checkout.starts if s.probed]
    names = {n for r in runs for n in r}
    medians = {n: statistics.median(r.get(n, 0.0) for r in runs) for n in names}
    ranked = sorted(medians.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {mb:.1f}" for name, mb in ranked)


def notes(checkouts: Sequence[Checkout]) -> list[str]:
    lines = []
    for c in checkouts:
        if not c.apps:
            continue
        parts = []
        for kind in KINDS:
            sends = [s for app in c.apps for s in app["sends"].get(kind, [])]
            if not sends:
                continue
            keys = ("start", "stream", "end", "cpu_in_max", "process_cpu_in_max")
            phase = {p: statistics.median(s.get(p, float("nan")) for s in sends) for p in keys}
            first = statistics.median(s["first_token_ms"] for s in sends)
            parts.append(
                f"{kind}: first token shown after {first:.0f} ms; worst gap by phase start {phase['start']:.0f},"
                f" streaming {phase['stream']:.0f}, end {phase['end']:.0f} ms; CPU in the worst gap: the loop's"
                f" thread {phase['cpu_in_max']:.0f} ms, the process {phase['process_cpu_in_max']:.0f} ms"
            )
        for size in ("long", "huge"):
            opens = [o for app in c.apps for o in app["opens"].get(size, [])]
            if opens:
                parts.append(
                    f"open {size}: load {statistics.median(o['load'] for o in opens):.0f} ms,"
                    f" handing to the view {statistics.median(o['render'] for o in opens):.0f} ms (median)"
                )
        lines.append(f"- {c.heading}: " + "; ".join(parts) + ".")
    return lines


def report(
    checkouts: Sequence[Checkout], *, command: str, seconds: float, postgres: str, load: tuple[float, float]
) -> str:
    steps = []
    for c in checkouts:
        if c.starts:
            steps.append(
                f"{c.heading} {_number(statistics.median(s.paint_ms for s in c.starts))} →"
                f" {_number(statistics.median(s.ready_ms for s in c.starts))} ms"
            )
    rounds = max((len(c.apps) for c in checkouts), default=0)
    starts = max((len(c.starts) for c in checkouts), default=0)
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}` — run {datetime.date.today().isoformat()}, {seconds / 60:.1f} min.",
            f"Machine: {machine()}. Load average {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
            f"Packages: {versions()}.",
            "",
            f"The real app (`CairnApp`, `MainWindow`, selector qasync loop, offscreen Qt) on a SQLite data folder of"
            f" {CONVERSATIONS:,} conversations (one of {LONG_MESSAGES:,} messages and one of {HUGE_MESSAGES:,}, built"
            f" turn by turn through the chat graph); Postgres {postgres};"
            f" `tests.support.model_server.ModelServer` in its own process streaming {TOKENS:,} tokens at"
            f" {1 / TOKEN_DELAY:.0f} tokens/s. Each checkout in its own processes, alternating: {rounds} app"
            " process(es) each (every one opens each long conversation a few times, the first of them cold, and"
            " sends one reply of each kind into the 1,000-message conversation) and"
            f" {starts} `main.py` processes (start-up, and RSS {IDLE_SECONDS:.0f} s after ready), on copies of the"
            " same data. Median, each run in brackets; see bench/ui.py for what each measure is.",
            "",
            table(checkouts),
            "",
            rss_table(checkouts),
            "",
            *notes(checkouts),
            "",
        ]
    )


def write_docs(section: str) -> None:
    """Replace the "## UI" section of docs/PERFORMANCE.md (other sections are kept)."""
    headings = "".join(f"{heading}\n\n{note}\n\n" for heading, note in OTHER_SECTIONS)
    write_section(SECTION, section, new_file="# Performance\n\n" + headings)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bench.ui", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="a commit to measure in the same run (a temporary git worktree)")
    parser.add_argument("--write", action="store_true", help="update the UI section of docs/PERFORMANCE.md")
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke run)")
    parser.add_argument("--rounds", type=int, help="app processes per checkout (default 3, --quick 1)")
    parser.add_argument("--runs", type=int, help="main.py processes per checkout (default 5, --quick 2)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="the replies to send (default: all)")
    parser.add_argument(
        "--view",
        choices=("cards", "default"),
        default="cards",
        help="this checkout's view: cards (CHAT_VIEW=cards where the setting exists) or its default",
    )
    parser.add_argument("--pgcluster", action="store_true", help="black-hole a throwaway PgCluster, not a closed port")
    parser.add_argument("--data", type=Path, help="reuse (or build once into) this data folder")
    parser.add_argument("--stalls", action="store_true", help="print where the loop's thread was during each stall")
    parser.add_argument("--only", choices=("app", "process"), help="run only the in-app or the process measures")
    parser.add_argument("--rss-files", action="store_true", help="print the files holding most of the idle RSS")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    runs = args.runs or (2 if args.quick else 5)
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kinds {sorted(unknown)}")
    command = shlex.join([".venv/bin/python", "-m", "bench.ui", *argv])

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-ui-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)  # last: after the worktree is removed
        checkouts = [Checkout("this checkout", ROOT, {"CHAT_VIEW": "cards"} if args.view == "cards" else {})]
        if args.baseline:
            base = stack.enter_context(worktree(args.baseline, work / "baseline"))
            checkouts.insert(0, Checkout(f"baseline {args.baseline}", base, {}))
        template = args.data or work / "template"
        threads = prepare_data(template, log)
        postgres = SilentPostgres(args.pgcluster)
        stack.callback(postgres.close)
        server = ModelServerProcess(TOKEN_DELAY)
        stack.callback(server.close)
        opens = 2 if args.quick else 3  # per app process: the first of each is cold
        request = {"threads": threads, "opens": opens, "kinds": kinds, "sends": 1, "stalls": args.stalls}
        counter = 0
        for n in range(max(rounds, runs) if args.only is None else rounds if args.only == "app" else runs):
            order = checkouts if n % 2 == 0 else checkouts[::-1]  # neither always runs first
            for checkout in order:
                counter += 1
                if args.only != "app" and n < runs:
                    start = start_process(checkout, work / f"run-{counter}", template, server.base_url, postgres.url)
                    checkout.starts.append(start)
                    rss = start.probed["rss"] if start.probed else float("nan")
                    log(
                        f"{checkout.name}: main.py {len(checkout.starts)}: first paint {start.paint_ms:.0f} ms, ready"
                        f" {start.ready_ms:.0f} ms, idle RSS {rss:.0f} MB"
                    )
                if args.only != "process" and n < rounds:
                    result = app_process(
                        checkout, work / f"app-{counter}", template, server.base_url, postgres.url, request
                    )
                    checkout.view = result["view"]
                    checkout.apps.append(result)
        section = report(
            checkouts,
            command=command,
            seconds=time.perf_counter() - started,
            postgres=postgres.describe(),
            load=(load_start[0], os.getloadavg()[0]),
        )
    print(section)
    if args.rss_files:
        for checkout in checkouts:
            if checkout.starts:
                print(f"\n{checkout.heading}, idle RSS by file (MB, median): {top_files(checkout)}")
    if args.write:
        write_docs(section)
        log(f"updated {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
