"""Cairn: a desktop LLM chat client whose conversations survive any network.

    python main.py                 open the window
    python main.py --version       print the version, then exit
    python main.py doctor [--json] print the settings, the storage tiers and the model server's state
    python main.py self-test [--json] [--report FILE]
                                   check this installation on a throwaway data dir (see gui/selftest.py)
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # before the imports: `doctor` counts its connect timeout from here

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from storage import loop  # noqa: E402
from storage.secrets import SecretStore, install_log_masking  # noqa: E402
from storage.settings import load_settings  # noqa: E402

log = logging.getLogger("cairn")


def setup_logging(verbose: bool) -> None:
    install_log_masking()  # before the first record: no URL password or API key ever reaches a log
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Their debug records are about themselves, not Cairn, and cost: qasync's hold the whole result of each call
    # run on a worker thread (the list of 1,000 conversations: 200 KB of text), aiosqlite's each statement twice,
    # markdown-it's every list it parses.
    for noisy in ("qasync", "aiosqlite", "markdown_it"):
        logging.getLogger(noisy).setLevel(logging.INFO)


def run_doctor(as_json: bool) -> int:
    from chat.doctor import diagnose_all, report

    settings = load_settings(strict=False)
    secrets = SecretStore()
    status, server = loop.run(diagnose_all(settings, secrets, started=STARTED))
    print(report(settings, secrets, status, server, as_json=as_json))
    return 0


def run_app(quit_after: float | None = None) -> int:
    from gui.display import display_problem  # before Qt, which aborts the process where it cannot open a window

    problem = display_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from gui.app import run  # Qt is imported only for the window, never for `doctor`

    return run(sys.argv[:1], quit_after=quit_after)


def run_selftest(args: argparse.Namespace) -> int:
    from gui.selftest import run  # Qt is imported only here and for the window

    return run(args)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("cairn")
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        return "(not installed)"


class VersionAction(argparse.Action):
    """``--version``, looked up only when asked: reading the installed metadata takes ~25 ms, at every start."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(f"Cairn {version()}")
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn, an LLM chat client that works offline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    parser.add_argument("--version", action=VersionAction, nargs=0, help="print the version, then exit")
    commands = parser.add_subparsers(dest="command")
    doctor = commands.add_parser("doctor", help="print settings, storage tiers and the model server's state, then exit")
    doctor.add_argument("--json", action="store_true", help="one JSON object instead of text")
    from gui.selftest import add_arguments as add_selftest_arguments  # stdlib only at import

    selftest = commands.add_parser(
        "self-test", help="open the window on a throwaway data dir, store a conversation, read it back, report"
    )
    add_selftest_arguments(selftest)
    # For tests and smoke checks: quit this many seconds after the window is ready.
    parser.add_argument("--quit-after", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "doctor":
        return run_doctor(args.json)
    if args.command == "self-test":
        return run_selftest(args)
    return run_app(args.quit_after)


if __name__ == "__main__":
    sys.exit(main())
