"""Render Cairn's icon source (resources/cairn.svg) into the formats each OS needs.

    python installer/make_icons.py [--source resources/cairn.svg] [--out resources/icons]

writes, into resources/icons/ (build outputs, ignored by git):

- ``cairn-<N>.png`` for N in 16 ... 1024: the Linux icon theme sizes and the sources of the two files below;
- ``cairn.ico``: Windows (16-256 px frames, each rendered from the SVG at its own size, not scaled down);
- ``cairn.icns``: macOS (128-1024 px and their @2x variants).

The SVG is rendered with QtSvg's ``QSvgRenderer`` (PySide6-Essentials has it); the ``.ico`` and ``.icns`` containers are
written with Pillow. The spec (installer/cairn.spec) and every build script run this first, so the bundled icons always
match the SVG.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "resources" / "cairn.svg"
DEFAULT_OUT = ROOT / "resources" / "icons"
NAME = "cairn"

PNG_SIZES = (16, 20, 24, 32, 40, 48, 64, 128, 256, 512, 1024)
ICO_SIZES = (16, 20, 24, 32, 40, 48, 64, 128, 256)  # Windows shows 16-48 in lists, 256 in large views
ICNS_SIZES = (32, 64, 128, 256, 512, 1024)  # what Pillow's writer stores (ic07-ic14)


def _qt_app() -> object:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    return QGuiApplication.instance() or QGuiApplication([sys.argv[0]])


def render_pngs(source: Path, sizes: tuple[int, ...] = PNG_SIZES) -> dict[int, bytes]:
    """The SVG rendered at each size (square, transparent background), as PNG bytes."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QRectF, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = _qt_app()
    renderer = QSvgRenderer(str(source))
    if not renderer.isValid():
        raise SystemExit(f"make_icons: {source} is not a valid SVG (or QtSvg cannot read it)")
    rendered: dict[int, bytes] = {}
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        if not image.convertToFormat(QImage.Format.Format_ARGB32).save(buffer, "PNG"):
            raise SystemExit(f"make_icons: Qt could not encode the {size} px PNG")
        buffer.close()
        rendered[size] = bytes(data.data())
    del app
    return rendered


def write_icons(source: Path, out: Path) -> list[Path]:
    from PIL import Image

    pngs = render_pngs(source)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for size, data in pngs.items():
        path = out / f"{NAME}-{size}.png"
        path.write_bytes(data)
        written.append(path)

    images = {size: Image.open(io.BytesIO(data)).convert("RGBA") for size, data in pngs.items()}

    ico = out / f"{NAME}.ico"
    largest_ico = max(ICO_SIZES)
    images[largest_ico].save(
        ico,
        format="ICO",
        sizes=[(s, s) for s in ICO_SIZES],
        append_images=[images[s] for s in ICO_SIZES if s != largest_ico],
    )
    written.append(ico)

    icns = out / f"{NAME}.icns"
    largest_icns = max(ICNS_SIZES)
    images[largest_icns].save(icns, format="ICNS", append_images=[images[s] for s in ICNS_SIZES if s != largest_icns])
    written.append(icns)
    _check(ico, icns)
    return written


def _check(ico: Path, icns: Path) -> None:
    """Read both containers back: a broken icon should fail the build, not show up as a blank square."""
    from PIL import Image

    with Image.open(ico) as image:
        sizes = set(image.info.get("sizes", ()))
    missing = {(s, s) for s in ICO_SIZES} - sizes
    if missing:
        raise SystemExit(f"make_icons: {ico} lacks the sizes {sorted(missing)}")
    with Image.open(icns) as image:
        if image.size != (max(ICNS_SIZES), max(ICNS_SIZES)):
            raise SystemExit(f"make_icons: {icns} lacks the {max(ICNS_SIZES)} px image (largest: {image.size})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the SVG (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"make_icons: {args.source} not found", file=sys.stderr)
        return 1
    written = write_icons(args.source, args.out)
    if not args.quiet:
        for path in written:
            print(f"make_icons: wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
