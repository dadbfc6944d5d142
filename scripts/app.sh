#!/usr/bin/env bash
# Set up and start Cairn from a checkout (Debian/Ubuntu/macOS with Python 3.11+).
#
#   scripts/app.sh               # the window, storing conversations in the embedded SQLite file
#   scripts/app.sh doctor        # extra arguments go to main.py
#
# Installs the project into .venv when its dependencies changed, and on Linux the libraries Qt needs to open a
# window on X11 (with apt-get, as root or through sudo) when they are missing.
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
# pip only when the project's dependencies changed (pyproject.toml, or the venv's Python): about 4.5 s otherwise
# paid at every start. The stamp is written after a successful install only.
stamp=.venv/cairn-installed
wanted="$({ cat pyproject.toml; .venv/bin/python -VV; } | { sha256sum 2>/dev/null || shasum -a 256; } | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
    pip_log="$(mktemp)"
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e . >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        echo "app.sh: pip install -e . failed" >&2
        exit 1
    fi
    rm -f "$pip_log"
    echo "$wanted" >"$stamp"
fi

# Qt's X11 plugin needs libraries a bare Debian lacks (libxcb-cursor0, libxcb-icccm4, ...; docs/INSTALL.md), and
# aborts with a message blaming itself without them. Installed here the way scripts/test.sh installs PostgreSQL.
# Only for the window on Linux: doctor needs none, macOS and Windows bundles carry their own.
opens_window=yes
for arg in "$@"; do
    case "$arg" in
        doctor | -h | --help | --version | --offscreen) opens_window=no ;;
    esac
done
if [ "$opens_window" = yes ] && [ "$(uname -s)" = Linux ]; then
    missing="$(.venv/bin/python -m gui.display packages)"
    if [ -n "$missing" ]; then
        read -r -a packages <<<"$missing"
        sudo=()
        if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        fi
        if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ "${#sudo[@]}" -eq 0 ]; }; then
            echo "app.sh: Qt needs these packages to open Cairn's window on X11, and they are not installed:" >&2
            echo "    apt-get install ${packages[*]}" >&2
            echo "app.sh: run that as root (Debian/Ubuntu; other systems: the same libraries from their packages)," >&2
            echo "then start Cairn again. \`scripts/app.sh doctor\` works without them." >&2
            exit 1
        fi
        echo "app.sh: installing ${packages[*]} with apt-get (Qt needs them to open a window on X11)" >&2
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${packages[@]}"
    fi
fi
exec .venv/bin/python main.py "$@"
