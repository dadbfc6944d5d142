"""Markdown to the HTML subset Qt's rich text understands, with highlighted code. No Qt import.

Safe by construction: raw HTML in a message is escaped (``html: False``), links keep markdown-it's URL validation
(no ``javascript:``), and images become plain links, so rendering a message never fetches anything from the
network. The source text of each code block is returned beside the HTML, so a copy of it is exact (the cards draw
top-level code blocks themselves, with their own Copy button: gui/conversation/blocks.py).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.styles import get_style_by_name
from pygments.util import ClassNotFound

LIGHT_STYLE = "default"
DARK_STYLE = "monokai"
MAX_HIGHLIGHT_CHARS = 100_000
"""Longer code blocks are shown plain: highlighting them would stall the event loop for a visible moment."""


@dataclass(frozen=True)
class Theme:
    """The colours rendering takes from the palette (the caller reads them from Qt)."""

    dark: bool = False
    muted: str = "#6b6b6b"
    link: str = "#1a5fb4"
    border: str = "#c0c0c0"

    @property
    def code_style(self) -> str:
        return DARK_STYLE if self.dark else LIGHT_STYLE

    @property
    def inline_code(self) -> str:
        """The background of `inline code`: a step off the page either way, dark enough to see on a tinted card,
        light enough for any text colour to keep its contrast."""
        return "#3b3e44" if self.dark else "#e9ebee"


LIGHT = Theme()
DARK = Theme(dark=True, muted="#a0a0a0", link="#78aeed", border="#5a5a5a")


@dataclass(frozen=True)
class Rendered:
    html: str
    code_blocks: tuple[str, ...]


@functools.lru_cache(maxsize=64)
def _lexer(language: str) -> Lexer | None:
    try:
        return get_lexer_by_name(language, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None


@functools.lru_cache(maxsize=8)
def _formatter(style: str) -> HtmlFormatter[str]:
    # nowrap: we draw the block ourselves; noclasses: Qt's rich text has no use for a style sheet of classes.
    return HtmlFormatter(style=style, nowrap=True, noclasses=True)


@functools.lru_cache(maxsize=8)
def code_background(style: str) -> str:
    return str(get_style_by_name(style).background_color or "#f8f8f8")


COMMON_LANGUAGES = (
    "python", "bash", "javascript", "typescript", "json", "sql", "c", "cpp", "java", "go", "rust", "html", "css",
    "yaml",
)
"""What models write code in most: their highlighters are built ahead (``warm_up_highlighting``)."""


def warm_up_highlighting() -> None:
    """Build the highlighters of the common languages in both styles, and markdown-it's rules, off the loop's
    thread (about 0.1 s): pygments
    compiles a lexer's rules when it is first used, 25 ms for Python and 33 ms for CSS, which the first conversation
    opened with such code would otherwise wait for."""
    for style in (LIGHT_STYLE, DARK_STYLE):
        for language in COMMON_LANGUAGES:
            highlight_code("x\n", language, style)
    render_markdown("# A\n\n**b** `c` [d](https://e) ~~f~~\n\n- g\n\n> h\n\n| i | j |\n|---|---|\n| k | l |\n")


def highlight_code(code: str, language: str, style: str) -> str:
    """Code as HTML spans with inline colours; plain escaped text for an unknown language or a huge block."""
    lexer = _lexer(language.lower()) if language else None
    if lexer is None or len(code) > MAX_HIGHLIGHT_CHARS:
        return html.escape(code)
    return highlight(code, lexer, _formatter(style))


class _Renderer:
    """One markdown-it instance; the theme and the code links of the message being rendered are per-call state."""

    def __init__(self) -> None:
        md = MarkdownIt("commonmark", {"html": False, "breaks": True, "typographer": False})
        md.enable(["table", "strikethrough"])
        # Set as bound methods (add_render_rule would rebind them to the renderer): the rules read per-call state.
        # The HTML renderer MarkdownIt makes by default; its rules are typed as methods of its own.
        rules = cast(dict[str, Any], cast(RendererHTML, md.renderer).rules)
        rules.update(
            fence=self._fence,
            code_block=self._fence,
            image=self._image,
            table_open=self._table_open,
            link_open=self._link_open,
            code_inline=self._code_inline,
            blockquote_open=self._blockquote_open,
            blockquote_close=self._blockquote_close,
        )
        self.md = md
        self.theme = LIGHT
        self.blocks: list[str] = []

    def render(self, text: str, theme: Theme) -> Rendered:
        self.theme, self.blocks = theme, []
        try:
            body = self.md.render(text)
            return Rendered(body, tuple(self.blocks))
        finally:
            self.blocks = []

    # markdown-it's render rules, bound: (tokens, idx, options, env) -> str
    def _fence(self, tokens: Sequence[Token], idx: int, _o: Any, _e: Any) -> str:
        token = tokens[idx]
        code = token.content
        if code.endswith("\n"):
            code = code[:-1]
        language = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
        self.blocks.append(code)
        style = self.theme.code_style
        background = code_background(style)
        header = f'<span style="color:{self.theme.muted}">{html.escape(language) or "code"}</span>'
        body = highlight_code(code, language, style)
        # A one-column table is the only box with a background and padding that Qt's rich text lays out.
        return (
            f'<table width="100%" cellspacing="0" cellpadding="6" bgcolor="{background}" '
            f'style="margin-top:4px; margin-bottom:8px; border-color:{self.theme.border}">'
            f'<tr><td style="font-size:small">{header}</td></tr>'
            f"<tr><td><pre>{body}</pre></td></tr></table>\n"
        )

    def _image(self, tokens: Sequence[Token], idx: int, _o: Any, _e: Any) -> str:
        # Never an <img>: showing it would fetch a URL the model chose. A link the user may choose to open.
        token = tokens[idx]
        src = str(token.attrGet("src") or "")
        alt = "".join(child.content for child in token.children or []) or src
        return f'<a href="{html.escape(src, quote=True)}"{self._link_style()}>[image: {html.escape(alt)}]</a>'

    def _table_open(self, _t: Sequence[Token], _i: int, _o: Any, _e: Any) -> str:
        return (
            f'<table border="1" cellspacing="0" cellpadding="4" '
            f'style="border-collapse:collapse; border-color:{self.theme.border}; margin-bottom:8px">\n'
        )

    def _code_inline(self, tokens: Sequence[Token], idx: int, _o: Any, _e: Any) -> str:
        # Thin no-break spaces pad the background on both sides (Qt's rich text has no padding for inline spans).
        code = html.escape(tokens[idx].content)
        return f'<code style="background-color:{self.theme.inline_code}">\u202f{code}\u202f</code>'

    def _blockquote_open(self, _t: Sequence[Token], _i: int, _o: Any, _e: Any) -> str:
        # A bar on the left: a narrow coloured cell beside the quote (the only way Qt's rich text draws one). The
        # quote keeps the text's colour: a muted one would fall under 4.5:1 on inline code's background.
        return (
            '<table cellspacing="0" cellpadding="0" style="margin-top:2px; margin-bottom:8px">'
            f'<tr><td width="3" bgcolor="{self.theme.border}"></td>'
            '<td style="padding-left:10px">\n'
        )

    def _blockquote_close(self, _t: Sequence[Token], _i: int, _o: Any, _e: Any) -> str:
        return "</td></tr></table>\n"

    def _link_style(self) -> str:
        # In the theme's link colour, made readable on the cards' tints: a TextEdit (selectable text) draws links in
        # the colour of the HTML, not in a linkColor of its own as Text does.
        return f' style="color:{self.theme.link}"'

    def _link_open(self, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
        # The address as a tooltip: the user sees where a link goes before choosing to open it.
        tokens[idx].attrSet("title", str(tokens[idx].attrGet("href") or ""))
        tokens[idx].attrSet("style", f"color:{self.theme.link}")
        return str(cast(RendererHTML, self.md.renderer).renderToken(tokens, idx, options, env))


_renderer = _Renderer()


def render_markdown(text: str, theme: Theme = LIGHT) -> Rendered:
    """Render one message."""
    return _renderer.render(text, theme)


def render_plain(text: str) -> str:
    """Text shown as typed: escaped, line breaks kept (for text that must not be read as Markdown)."""
    return "<p>" + html.escape(text).replace("\n", "<br>") + "</p>"
