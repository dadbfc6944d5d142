"""Can Qt open a window here? Checked before Qt is imported, because Qt's answer on Linux is to abort the process with
"Could not load the Qt platform plugin "xcb" ... Reinstalling the application may fix this problem", which blames
the wrong thing whether there is no desktop session at all, no X server at $DISPLAY, or a library missing.

Imports nothing from Qt (``scripts/app.sh`` runs ``python -m gui.display packages`` to learn which Debian packages
to install; docs/INSTALL.md lists them). macOS and Windows need nothing: their Qt plugins ship with what they need.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

NO_SESSION = (
    "Cairn needs a desktop session: it found no display (neither DISPLAY nor WAYLAND_DISPLAY is set), so it cannot "
    "open its window. Start it from your desktop, or from a terminal inside it. "
    "`scripts/app.sh doctor` (or `python main.py doctor`) works without one: it prints the settings and the state "
    "of the storage."
)

XCB_PACKAGES: dict[str, str] = {
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-glx.so.0": "libxcb-glx0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libXau.so.6": "libxau6",
    "libXdmcp.so.6": "libxdmcp6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libGLX.so.0": "libglx0",
    "libGLdispatch.so.0": "libglvnd0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
}
"""What Qt 6's xcb platform plugin (``libqxcb.so``, with ``libQt6XcbQpa`` and ``libQt6Gui``) loads, and the Debian
and Ubuntu package holding each (``dpkg -S``); tests/gui/test_first_start.py checks them against this machine."""


QT_OWN = ("libQt6", "libicu", "libpyside6", "libshiboken6")
"""Libraries PySide6 (and Cairn's bundles) carry themselves: one missing is a broken installation, not a package
for the system to install, and Qt's own message says which."""


def qt_platform(environ: Mapping[str, str]) -> str:
    """The platform plugin Qt will try first: QT_QPA_PLATFORM's first entry, or "" for Qt's own choice."""
    return environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()


def uses_xcb(environ: Mapping[str, str], platform: str = sys.platform) -> bool:
    """Qt will open its window through X11: Linux (or a BSD), a DISPLAY, and no other platform asked for (in a
    Wayland session Qt picks its wayland plugin)."""
    if platform in ("darwin", "win32", "cygwin") or not environ.get("DISPLAY"):
        return False
    chosen = qt_platform(environ)
    return chosen == "xcb" or (chosen == "" and not environ.get("WAYLAND_DISPLAY"))


def xcb_plugin() -> Path | None:
    """The xcb plugin Qt would load: from QT_QPA_PLATFORM_PLUGIN_PATH if that holds one, else PySide6's own."""
    override = os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH")
    if override and (Path(override) / "libqxcb.so").is_file():
        return Path(override) / "libqxcb.so"
    try:
        import PySide6  # the package only: Qt's libraries are not loaded by this
    except ImportError:
        return None
    plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return plugin if plugin.is_file() else None


def missing_libraries(plugin: Path | None = None) -> list[str]:
    """The system libraries the xcb plugin needs and the dynamic linker cannot find (``ldd``'s "not found"); []
    when nothing is missing or this cannot be told (no ldd, no plugin, a bundle: Qt then says what it knows)."""
    if plugin is None and getattr(sys, "frozen", False):
        return []  # a bundle: its libraries are found through its own loader paths, which ldd would not follow
    plugin = plugin or xcb_plugin()
    ldd = shutil.which("ldd")
    if plugin is None or ldd is None:
        return []
    result = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, check=False)
    missing: list[str] = []
    for line in result.stdout.splitlines():
        name, _, where = line.strip().partition("=>")
        name = name.strip()
        if where.strip() == "not found" and name not in missing and not name.startswith(QT_OWN):
            missing.append(name)
    return missing


def packages_for(libraries: list[str]) -> list[str]:
    """The Debian packages holding ``libraries``, each once, in order; a library not in the table is left out."""
    packages: list[str] = []
    for library in libraries:
        package = XCB_PACKAGES.get(library)
        if package and package not in packages:
            packages.append(package)
    return packages


def missing_message(libraries: list[str]) -> str:
    packages = packages_for(libraries)
    unknown = [library for library in libraries if library not in XCB_PACKAGES]
    lines = [
        "Cairn cannot open its window: Qt needs these libraries to draw on X11 and they are not installed: "
        + ", ".join(libraries)
        + "."
    ]
    if packages:
        lines.append(
            "On Debian or Ubuntu install them with:\n    sudo apt-get install " + " ".join(packages) + "\n"
            "(`scripts/app.sh` installs them itself when it can use root or sudo.)"
        )
    if unknown:
        lines.append("Your distribution's package manager can tell which packages hold " + ", ".join(unknown) + ".")
    lines.append("`scripts/app.sh doctor` (or `python main.py doctor`) works without a window.")
    return "\n".join(lines)


def x_server_answers(display: str) -> bool:
    """Whether an X server accepts a connection at ``display``, asked the way Qt's xcb plugin asks (libxcb); True
    when libxcb itself is missing (that is reported as a missing library)."""
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return True
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    connection = xcb.xcb_connect(display.encode(), None)
    try:
        return xcb.xcb_connection_has_error(connection) == 0
    finally:
        xcb.xcb_disconnect(connection)  # also frees the error object xcb_connect returns on failure


def display_problem(environ: Mapping[str, str] | None = None, platform: str = sys.platform) -> str | None:
    """Why Qt could not open a window here, in words for people; None when it should (or when another platform
    than X11 was asked for, offscreen included: trusted as given)."""
    environ = os.environ if environ is None else environ
    if platform in ("darwin", "win32", "cygwin") or qt_platform(environ) not in ("", "xcb"):
        return None
    if environ.get("WAYLAND_DISPLAY") and not qt_platform(environ):
        return None  # a Wayland session: Qt's wayland plugin needs none of this
    display = environ.get("DISPLAY", "")
    if not display:
        return NO_SESSION
    missing = missing_libraries()
    if missing:
        return missing_message(missing)
    if not x_server_answers(display):
        return (
            f"Cairn cannot open its window: no X server accepts connections at DISPLAY={display} (it is not "
            "running, or this user may not use it). Cairn needs a desktop session: start it from your desktop, "
            "or from a terminal inside it. `scripts/app.sh doctor` (or `python main.py doctor`) works without one."
        )
    return None


def main(argv: list[str]) -> int:
    """``python -m gui.display packages``: the Debian packages to install before Qt can open a window here, on one
    line (nothing when none are missing or no X11 window is to be opened)."""
    if argv[1:] != ["packages"]:
        print("usage: python -m gui.display packages", file=sys.stderr)
        return 2
    if uses_xcb(os.environ):
        print(" ".join(packages_for(missing_libraries())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
