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
A baseline is a ``git worktree`` of the given commit sharing this checkout's ``.venv``; the two alternate, so load
on the machine falls on both alike. Median of the runs, each run listed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"paint": 500.0, "ready": 1500.0}


def one_start(checkout: Path, work: Path) -> tuple[float, float]:
    """(ms to first paint, ms to ready) of one ``main.py`` process in ``checkout``."""
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "CAIRN_CONFIG_DIR": str(work / "config"),
        "CAIRN_DATA_DIR": str(work / "data"),
        "MODEL_BASE_URL": "http://127.0.0.1:9/v1",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "main.py", "-v", "--quit-after", "0.3"],
        cwd=checkout,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    paint = ready = float("nan")
    assert process.stderr is not None
    for line in process.stderr:
        now = (time.perf_counter() - started) * 1000
        if "window painted" in line:
            paint = now
        elif "cairn.app: ready " in line:
            ready = now
    if process.wait() != 0:
        raise RuntimeError(f"main.py in {checkout} exited with {process.returncode}")
    return paint, ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a commit to measure in the same run (a temporary git worktree)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--write", action="store_true", help="update the Start-up section of docs/PERFORMANCE.md")
    args = parser.parse_args(argv)

    checkouts = {"this checkout": ROOT}
    temp = Path(tempfile.mkdtemp(prefix="cairn-bench-startup-"))
    try:
        if args.baseline:
            base = temp / "baseline"
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), args.baseline], cwd=ROOT, check=True)
            checkouts = {f"baseline {args.baseline}": base, **checkouts}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in checkouts}
        for n in range(args.runs):
            for name, checkout in checkouts.items():
                work = temp / f"{len(results[name])}-{abs(hash(name))}"
                results[name].append(one_start(checkout, work))
                print(f"  run {n + 1} {name}: paint {results[name][-1][0]:.0f} ms, ready {results[name][-1][1]:.0f} ms")
    finally:
        if args.baseline:
            subprocess.run(["git", "worktree", "remove", "--force", str(temp / "baseline")], cwd=ROOT, check=False)
        shutil.rmtree(temp, ignore_errors=True)

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
            " processes per checkout, alternating; median (each run in brackets). \"Ready\": the chat engine is"
            " attached, a message sent now is answered with nothing left to load.\n\n" + table + "\n",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
