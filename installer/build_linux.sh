#!/usr/bin/env bash
# Build Cairn's Linux one-dir bundle (dist/Cairn/Cairn) and check it with its own self-test.
#
#   installer/build_linux.sh                  # build into dist/, run `dist/Cairn/Cairn self-test`
#   installer/build_linux.sh --tarball        # ... and pack dist/Cairn-<version>-linux-<arch>.tar.gz
#   installer/build_linux.sh --dist DIR --work DIR --no-check
#
# Needs Python 3.11+ and binutils (PyInstaller runs objdump; Debian: apt-get install binutils). Uses .venv (made
# and filled with `pip install -e '.[test]'` when missing or lacking PyInstaller), or the Python in $PYTHON as is.
# The icons are rendered from resources/cairn.svg by the spec (installer/make_icons.py) first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

dist="$root/dist"
work="$root/build"
check=1
tarball=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dist) dist="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --no-check) check=0; shift ;;
        --tarball) tarball=1; shift ;;
        -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build_linux.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! command -v objdump >/dev/null 2>&1; then
    echo "build_linux.sh: PyInstaller needs objdump: apt-get install binutils" >&2
    exit 1
fi

python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ ! -x .venv/bin/python ]; then
        base="$(command -v python3.11 || command -v python3 || true)"
        [ -n "$base" ] || { echo "build_linux.sh: Python 3.11+ not found" >&2; exit 1; }
        "$base" -m venv .venv
    fi
    python=.venv/bin/python
    if ! "$python" -c 'import PyInstaller, PIL, PySide6.QtSvg, langgraph' >/dev/null 2>&1; then
        "$python" -m pip install -q --disable-pip-version-check -e '.[test]'
    fi
fi

start=$(date +%s)
QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}" "$python" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$dist" --workpath "$work" installer/cairn.spec
echo "build_linux.sh: built $dist/Cairn in $(( $(date +%s) - start )) s, $(du -sh "$dist/Cairn" | cut -f1)"

if [ "$check" -eq 1 ]; then
    QT_QPA_PLATFORM=offscreen "$dist/Cairn/Cairn" self-test --offscreen
fi

if [ "$tarball" -eq 1 ]; then
    version="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
    archive="$dist/Cairn-$version-linux-$(uname -m).tar.gz"
    tar -C "$dist" -czf "$archive" Cairn
    echo "build_linux.sh: $archive"
fi
