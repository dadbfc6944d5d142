#!/usr/bin/env bash
# Pack a built Cairn.app into a drag-to-Applications disk image.
#
#   installer/macos/build_dmg.sh dist/Cairn.app dist/Cairn-0.1.0-macos-arm64.dmg
#
# With `create-dmg` on PATH (brew install create-dmg) the window gets icon positions and an Applications drop link;
# without it (or if it fails: it drives Finder with AppleScript, which needs a GUI session) plain `hdiutil` makes a
# compressed image holding Cairn.app and a symlink to /Applications, which Finder shows as the drop target.
# Environment: CAIRN_CODESIGN_IDENTITY signs the image (the app inside must already be signed: see the spec).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 path/to/Cairn.app path/to/output.dmg" >&2
    exit 2
fi
app="$1"
dmg="$2"
[ -d "$app" ] || { echo "build_dmg.sh: $app is not an app bundle" >&2; exit 1; }
[ "$(uname -s)" = Darwin ] || { echo "build_dmg.sh: needs macOS (hdiutil)" >&2; exit 1; }

name="$(basename "$app" .app)"
icns="$app/Contents/Resources/$(/usr/libexec/PlistBuddy -c 'Print :CFBundleIconFile' "$app/Contents/Info.plist" 2>/dev/null || echo cairn.icns)"
case "$icns" in *.icns) ;; *) icns="$icns.icns" ;; esac

staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
# ditto keeps the bundle's symlinks, extended attributes and code signature intact.
ditto "$app" "$staging/$name.app"
mkdir -p "$(dirname "$dmg")"
rm -f "$dmg"

made=0
if command -v create-dmg >/dev/null 2>&1; then
    args=(--volname "$name" --window-pos 200 120 --window-size 560 340 --icon-size 110
          --icon "$name.app" 150 170 --hide-extension "$name.app" --app-drop-link 410 170 --no-internet-enable)
    [ -f "$icns" ] && args+=(--volicon "$icns")
    [ "${CI:-}" = true ] && args+=(--skip-jenkins)  # no Finder scripting on a headless runner
    if create-dmg "${args[@]}" "$dmg" "$staging"; then
        made=1
    else
        echo "build_dmg.sh: create-dmg failed; falling back to hdiutil" >&2
        rm -f "$dmg"
    fi
fi
if [ "$made" -eq 0 ]; then
    ln -s /Applications "$staging/Applications"
    hdiutil create -volname "$name" -srcfolder "$staging" -fs HFS+ -format UDZO -imagekey zlib-level=9 -ov "$dmg"
fi

if [ -n "${CAIRN_CODESIGN_IDENTITY:-}" ]; then
    codesign --force --sign "$CAIRN_CODESIGN_IDENTITY" --timestamp "$dmg"
fi
hdiutil verify "$dmg"
echo "build_dmg.sh: $dmg ($(du -h "$dmg" | cut -f1))"
