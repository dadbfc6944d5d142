"""Cairn: a desktop LLM chat client whose conversations survive any network.

    python main.py                 open the window
    python main.py doctor [--json] print the settings in effect and the state of each storage tier
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from storage import loop
from storage.secrets import SecretStore, install_log_masking
from storage.settings import load_settings

log = logging.getLogger("cairn")


def setup_logging(verbose: bool) -> None:
    install_log_masking()  # before the first record: no URL password or API key ever reaches a log
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_doctor(as_json: bool) -> int:
    from storage.doctor import diagnose, report_json, report_text

    settings = load_settings(strict=False)
    secrets = SecretStore()
    status = loop.run(diagnose(settings, secrets))
    print(report_json(settings, secrets, status) if as_json else report_text(settings, secrets, status))
    return 0


def run_app() -> int:
    print("The Cairn window is not built yet; try `python main.py doctor`.", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn, an LLM chat client that works offline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    commands = parser.add_subparsers(dest="command")
    doctor = commands.add_parser("doctor", help="print settings and storage tiers, then exit")
    doctor.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "doctor":
        return run_doctor(args.json)
    return run_app()


if __name__ == "__main__":
    sys.exit(main())
