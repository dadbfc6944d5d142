#!/usr/bin/env bash
# Build Cairn for macOS: dist/Cairn.app, its self-test, and a drag-to-Applications disk image.
#
#   installer/build_macos.sh                  # app + self-test + dist/Cairn-<version>-macos-<arch>.dmg
#   installer/build_macos.sh --no-dmg --no-check
#
# Needs Python 3.11+ (python.org or Homebrew) on the Mac of the target architecture (arm64 or x86_64): PyInstaller
# does not cross-build. Uses .venv (made and filled with `pip install -e '.[test]'` when missing or lacking PyInstaller),
# or the Python in $PYTHON as is.
#
# Signing and notarization happen only when these are set (a person's Keychain or the release workflow provide them):
#   CAIRN_CODESIGN_IDENTITY   "Developer ID Application: Name (TEAMID)": signs every binary, the app and the image
#   CAIRN_NOTARY_APPLE_ID, CAIRN_NOTARY_TEAM_ID, CAIRN_NOTARY_PASSWORD (an app-specific password):
#                             submit the image to Apple's notary service, wait, and staple the ticket
# Without them the app is ad-hoc signed (it runs on the machine that built it; others must right-click > Open).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

dmg=1
check=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-dmg) dmg=0; shift ;;
        --no-check) check=0; shift ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build_macos.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(uname -s)" = Darwin ] || { echo "build_macos.sh: run this on macOS" >&2; exit 1; }

python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ ! -x .venv/bin/python ]; then
        base="$(command -v python3.11 || command -v python3 || true)"
        [ -n "$base" ] || { echo "build_macos.sh: Python 3.11+ not found" >&2; exit 1; }
        "$base" -m venv .venv
    fi
    python=.venv/bin/python
    if ! "$python" -c 'import PyInstaller, PIL, PySide6.QtSvg, langgraph' >/dev/null 2>&1; then
        "$python" -m pip install -q --disable-pip-version-check -e '.[test]'
    fi
fi
version="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"

start=$(date +%s)
"$python" -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build installer/cairn.spec
app="dist/Cairn.app"
echo "build_macos.sh: built $app $version in $(( $(date +%s) - start )) s, $(du -sh "$app" | cut -f1)"
codesign --verify --deep --strict --verbose=2 "$app"

if [ "$check" -eq 1 ]; then
    # The real window (Cocoa) and the Keychain backend: what a user's start needs, checked in the built app.
    # shellcheck disable=SC2086  # CAIRN_SELFTEST_ARGS is a list of extra flags
    "$app/Contents/MacOS/Cairn" self-test --require-keyring --report build/selftest-macos.json ${CAIRN_SELFTEST_ARGS:-}
fi

if [ "$dmg" -eq 1 ]; then
    image="dist/Cairn-$version-macos-$(uname -m).dmg"
    bash installer/macos/build_dmg.sh "$app" "$image"
    if [ -n "${CAIRN_NOTARY_APPLE_ID:-}" ] && [ -n "${CAIRN_NOTARY_TEAM_ID:-}" ] \
        && [ -n "${CAIRN_NOTARY_PASSWORD:-}" ] && [ -n "${CAIRN_CODESIGN_IDENTITY:-}" ]; then
        xcrun notarytool submit "$image" --apple-id "$CAIRN_NOTARY_APPLE_ID" --team-id "$CAIRN_NOTARY_TEAM_ID" \
            --password "$CAIRN_NOTARY_PASSWORD" --wait
        xcrun stapler staple "$image"
        xcrun stapler validate "$image"
        spctl --assess --type open --context context:primary-signature --verbose=2 "$image"
    else
        echo "build_macos.sh: not notarized (CAIRN_CODESIGN_IDENTITY and CAIRN_NOTARY_* are not all set)"
    fi
    echo "build_macos.sh: $image"
fi
