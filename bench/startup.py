"""How soon Cairn is usable after it is started: process start → first paint, and → ready to send.

Usage::

    .venv/bin/python -m bench.startup                       # this checkout, 9 processes
    .venv/bin/python -m bench.startup --baseline d3976c7    # and a baseline commit, alternating, in the same run
    .venv/bin/python -m bench.startup --baseline d3976c7 --write   # and update docs/PERFORMANCE.md

Each run is ``main.py`` in a fresh process, offscreen, on an empty data folder (``CAIRN_DATA_DIR``, settings from
``CAIRN_CONFIG_DIR``, a model server URL where nothing listens: start-up never waits on it), quitting 0.3 s after it
is ready. The times are taken by this process from the moment it spawns ``main.py`` until the app's log says the
window painted and the chat engine is attached ("ready": a message sent now is stored and sent; the model client
finishes loading in the background, about 0.5 s more, before the first request).
A baseline is a ``git worktree`` of the given commit run by the same Python (this ``.venv``); the two alternate, so load
on the machine falls on both alike. Median of the runs, each run listed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"paint": 500.0, "ready": 1500.0}


@dataclass
class Start:
    """One ``main.py`` process: ms from spawn to its first paint and to ready; what ``probe`` returned."""

    paint_ms: float
    ready_ms: float
    probed: Any = None


def one_start(
    checkout: Path,
    work: Path,
    *,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    quit_after: float = 0.3,
    probe: Callable[[int], Any] | None = None,
    probe_after: float = 0.0,
) -> Start:
    """One ``main.py`` process in ``checkout``, with ``checkout`` as its working directory (its code is the one
    run). ``env``: the process's settings (default: an empty data folder in ``work`` and a model server URL where
    nothing listens). ``probe(pid)`` is called ``probe_after`` seconds after the process is ready, while it still
    runs (``quit_after`` must leave it the time): bench.ui reads the idle process's memory so. ``unset``: variables of
    this process's environment the child must not see."""
    if env is None:
        env = {
            "CAIRN_CONFIG_DIR": str(work / "config"),
            "CAIRN_DATA_DIR": str(work / "data"),
            "MODEL_BASE_URL": "http://127.0.0.1:9/v1",
        }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "main.py", "-v", "--quit-after", str(quit_after)],
        cwd=checkout,
        env={**{k: v for k, v in os.environ.items() if k not in set(unset)}, "QT_QPA_PLATFORM": "offscreen", **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    paint = ready = float("nan")
    ready_event = threading.Event()
    log: list[str] = []

    def read() -> None:
        nonlocal paint, ready
        assert process.stderr is not None
        for line in process.stderr:
            now = (time.perf_counter() - started) * 1000
            log.append(line)
            if "window painted" in line:
                paint = now
            elif "cairn.app: ready " in line:
                ready = now
                ready_event.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    probed = None
    if probe is not None and ready_event.wait(120):
        time.sleep(probe_after)
        probed = probe(process.pid)
    if process.wait(120) != 0:
        raise RuntimeError(f"main.py in {checkout} exited with {process.returncode}:\n{''.join(log[-30:])}")
    reader.join()
    return Start(paint, ready, probed)


@contextlib.contextmanager
def worktree(commit: str, where: Path) -> Iterator[Path]:
    """A ``git worktree`` of ``commit`` at ``where`` for the time of the block. It has no ``.venv``: it is run by
    the Python running the benchmark, so the packages are the same and only Cairn's code differs."""
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(where), commit], cwd=ROOT, check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a commit to measure in the same run (a temporary git worktree)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--write", action="store_true", help="update the Start-up section of docs/PERFORMANCE.md")
    args = parser.parse_args(argv)

    checkouts = {"this checkout": ROOT}
    temp = Path(tempfile.mkdtemp(prefix="cairn-bench-startup-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, temp, ignore_errors=True)  # last: after the worktree is removed
        if args.baseline:
            base = stack.enter_context(worktree(args.baseline, temp / "baseline"))
            checkouts = {f"baseline {args.baseline}": base, **checkouts}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in checkouts}
        for n in range(args.runs):
            for name, checkout in checkouts.items():
                work = temp / f"{len(results[name])}-{abs(hash(name))}"
                start = one_start(checkout, work)
                results[name].append((start.paint_ms, start.ready_ms))
                print(f"  run {n + 1} {name}: paint {results[name][-1][0]:.0f} ms, ready {results[name][-1][1]:.0f} ms")

    load = os.getloadavg()[0]
    lines = [
        "| measure | target | " + " | ".join(results) + " |",
        "|---|---|" + "---|" * len(results),
    ]
    for index, (label, key) in enumerate((("Process start → first paint", "paint"), ("→ ready to send", "ready"))):
        cells = []
        for runs in results.values():
            values = [r[index] for r in runs]
            cells.append(f"{statistics.median(values):.0f} ms ({', '.join(f'{v:.0f}' for v in values)})")
        lines.append(f"| {label} | ≤ {TARGETS[key]:.0f} ms | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        command = "`.venv/bin/python -m bench.startup" + (f" --baseline {args.baseline}" if args.baseline else "")
        command += f" --runs {args.runs} --write`"
        write_section(
            "## Start-up",
            "## Start-up\n\n"
            f"Command: {command} ({time.strftime('%Y-%m-%d', time.gmtime())}). Machine: {machine()}; load average"
            f" {load:.2f} at the end. `main.py` in a fresh process, offscreen, on an empty data folder, {args.runs}"
            ' processes per checkout, alternating; median (each run in brackets). "Ready": the chat engine is'
            " attached, a message sent now is answered with nothing left to load.\n\n" + table + "\n",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
