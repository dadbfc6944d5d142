#!/usr/bin/env bash
# Set up and run Cairn's whole test suite on a fresh Debian machine (Python 3.11).
#
#   scripts/test.sh                  # everything
#   scripts/test.sh -q -k proxy      # extra arguments go to pytest
#
# Installs Debian's `postgresql` package when no server binaries are found (unless TEST_POSTGRES_URL
# points at a server), and `faketime`, `xvfb`, the X11 libraries Qt needs, a CJK font and the other tools the tests
# use when missing, creates .venv, installs the project with its test extras, type-checks it (mypy), then runs
# pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Same search as tests/support/pgcluster.py: pg_config --bindir, newest /usr/lib/postgresql/*/bin, PATH.
has_server_binaries() {
    [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ] && [ -x "$1/postgres" ]
}
find_pg_bindir() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [ -n "$dir" ] && has_server_binaries "$dir"; then
            echo "$dir"
            return 0
        fi
    fi
    while IFS= read -r dir; do
        if [ -n "$dir" ] && has_server_binaries "$dir"; then
            echo "$dir"
            return 0
        fi
    done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -V -r)
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 \
        && command -v postgres >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

apt_packages=()
if [ -z "${TEST_POSTGRES_URL:-}" ] && ! find_pg_bindir >/dev/null; then
    apt_packages+=(postgresql)
fi

# tests/storage/test_clock_skew.py runs another device under libfaketime, so its clock is off without touching the code.
if ! command -v faketime >/dev/null 2>&1; then
    apt_packages+=(faketime)
fi

# tests/storage/test_local_disk.py makes an ext4 image (mkfs.ext4) and marks files immutable (chattr): e2fsprogs.
if ! command -v mkfs.ext4 >/dev/null 2>&1 || ! command -v chattr >/dev/null 2>&1; then
    apt_packages+=(e2fsprogs)
fi

# tests/gui/test_composer.py types Chinese: a font with CJK characters (a fallback font's taller lines).
if ! fc-list :lang=zh 2>/dev/null | grep -q .; then
    apt_packages+=(fonts-wqy-microhei)
fi

# PyInstaller, which tests/installer/test_bundle.py runs to build the Linux bundle, needs objdump.
if ! command -v objdump >/dev/null 2>&1; then
    apt_packages+=(binutils)
fi

# tests/gui/test_first_start.py opens the real window on an X server of its own, and kills that server.
if ! command -v Xvfb >/dev/null 2>&1; then
    apt_packages+=(xvfb)
fi

python=""
if [ ! -x .venv/bin/python ]; then
    python="$(command -v python3.11 || command -v python3 || true)"
    if [ -z "$python" ]; then
        echo "test.sh: Python 3.11 not found (Debian: apt-get install python3 python3-venv)" >&2
        exit 1
    fi
    # Debian's python3 lacks ensurepip (so `-m venv` fails) until python3-venv is installed.
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_packages+=(python3-venv)
    fi
fi

apt_install() {
    echo "test.sh: installing $* with apt-get" >&2
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "test.sh: need root or sudo to apt-get install $*" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

if [ "${#apt_packages[@]}" -gt 0 ]; then
    apt_install "${apt_packages[@]}"
fi

if [ -n "$python" ]; then
    echo "test.sh: creating .venv with $python" >&2
    "$python" -m venv .venv
fi
# Quiet on success (setuptools' build warnings are noise here); the full log on failure.
pip_log="$(mktemp)"
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    rm -f "$pip_log"
    echo "test.sh: pip install -e '.[test]' failed" >&2
    exit 1
fi
rm -f "$pip_log"

# The libraries Qt's X11 plugin needs (libxcb-cursor0, libxcb-icccm4, ...: gui/display.py knows which it lacks here).
xcb_packages="$(env -u QT_QPA_PLATFORM -u WAYLAND_DISPLAY DISPLAY=:0 .venv/bin/python -m gui.display packages)"
if [ -n "$xcb_packages" ]; then
    read -r -a xcb_list <<<"$xcb_packages"
    apt_install "${xcb_list[@]}"
fi

# The type checker first (storage/, chat/, gui/, main.py: [tool.mypy] in pyproject.toml): a wrong type fails here.
echo "test.sh: type-checking with mypy" >&2
.venv/bin/python -m mypy

exec .venv/bin/python -m pytest "$@"
