#!/usr/bin/env bash
# Set up and start Cairn from a checkout (Debian/Ubuntu/macOS with Python 3.11+).
#
#   scripts/app.sh               # the window, storing conversations in the embedded SQLite file
#   scripts/app.sh doctor        # extra arguments go to main.py
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python="$(command -v python3.11 || command -v python3 || true)"
    if [ -z "$python" ]; then
        echo "app.sh: Python 3.11 or newer is needed (Debian: apt-get install python3 python3-venv)" >&2
        exit 1
    fi
    "$python" -m venv .venv
fi
pip_log="$(mktemp)"
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e . >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    rm -f "$pip_log"
    echo "app.sh: pip install -e . failed" >&2
    exit 1
fi
rm -f "$pip_log"
exec .venv/bin/python main.py "$@"
