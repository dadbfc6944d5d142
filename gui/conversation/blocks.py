"""A message as the blocks Qt Quick draws: rich-text runs of Markdown, and code blocks cut into chunks. No Qt import.

Why blocks: a code block needs its own horizontal scroll and a Copy button, which one rich-text item cannot give, so
each top-level fenced (or indented) code block becomes a block of its own and the Markdown between code blocks is
rendered by ``gui.markdown`` into one rich-text run.

Why chunks: a code block is cut every ``CHUNK_LINES`` lines, each chunk drawn by its own text item, so a streaming
200 KB block lays out only its last chunk again when tokens arrive, not 5,000 lines. The cut depends only on the
code, and each chunk is highlighted on its own (the highlight of a complete chunk is cached), so a block streamed
chunk by chunk and the same block rendered whole are identical: finishing a reply changes nothing that was drawn.
Chunk by chunk highlighting can miss a construct that spans a cut (a long string): a small price for that.

``StreamSplitter`` follows a reply as it grows: the part before its last stable cut (a point after which nothing
that follows can change what is before it) is rendered once, only the tail is rendered again, and when the tail is
an open code fence its code is taken as it is, without parsing Markdown again.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass

from markdown_it import MarkdownIt
from pygments.styles import get_style_by_name
from pygments.token import _TokenType

from gui.markdown import MAX_HIGHLIGHT_CHARS, Theme, _lexer, render_markdown, render_plain

CHUNK_LINES = 40
"""Lines of code per text item: small enough that laying out the growing one stays well under a millisecond."""

_parser = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
_FENCE_LINE = re.compile(r"(`{3,}|~{3,})(.*)$")
_LIST_ITEM = re.compile(r"(?:[-*+]|\d{1,9}[.)])(?:\s|$)")


@dataclass(frozen=True)
class Chunk:
    text: str  # HTML when ``rich``, else the code as it is
    rich: bool


@dataclass(frozen=True)
class Block:
    kind: str  # "text" or "code"
    html: str = ""  # a text block's rich text
    styled: bool = False  # ``html`` is within Qt Quick's StyledText (see ``text_block``)
    language: str = ""
    code: str = ""  # a code block's source (what Copy copies)

    def chunks(self, theme: Theme) -> list[Chunk]:
        return code_chunks(self.code, self.language, theme.code_style)


def _lines(text: str) -> list[str]:
    """Lines with their ends, cut only at "\\n" as markdown-it counts them (``splitlines`` cuts at more)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines


STYLED_TAGS = frozenset({"p", "br", "b", "strong", "i", "em", "u", "a", "ul", "ol", "li", "pre", "font"})
STYLED_TAGS |= {f"h{n}" for n in range(1, 7)}
_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9]*)")
_EM = re.compile(r"<(/?)em>")


def text_block(text: str, theme: Theme, *, plain: bool = False) -> Block:
    """Markdown (or plain text) as one block. HTML that Qt Quick's StyledText can show (paragraphs, emphasis,
    links, lists, headings: most of what a model writes) is marked ``styled``: a StyledText item lays a 15 KB
    paragraph out in about 1 ms where RichText takes 8–11 ms, which a growing paragraph pays at every flush.
    Tables, block quotes and inline code need RichText."""
    body = render_plain(text) if plain else render_markdown(text, theme).html
    if {tag.lower() for tag in _TAG.findall(body)} <= STYLED_TAGS:
        return Block("text", html=_EM.sub(r"<\1i>", body), styled=True)  # StyledText has <i>, not <em>
    return Block("text", html=body)


def split_blocks(text: str, theme: Theme, *, plain: bool = False) -> list[Block]:
    """The blocks of a whole message: its text cut at every stable cut (see ``StreamSplitter``), each piece's
    blocks; so a reply streamed and the same reply rendered whole are the same blocks. ``plain``: text shown as
    typed (a user's message without code), one block."""
    if plain:
        return [text_block(text, theme, plain=True)] if text else []
    scanner = StreamSplitter(theme)
    scanner.scan(text)
    blocks: list[Block] = []
    start = 0
    for cut in [*scanner.cuts, len(text)]:
        if cut > start:
            blocks.extend(parse_blocks(text[start:cut], theme))
            start = cut
    return blocks


def parse_blocks(text: str, theme: Theme) -> list[Block]:
    """The blocks of a piece of Markdown: each top-level code block on its own, the text between as one block."""
    blocks: list[Block] = []
    lines = _lines(text)
    start = 0
    for token in _parser.parse(text):
        if token.level != 0 or token.type not in ("fence", "code_block") or token.map is None:
            continue
        first, stop = token.map
        if first > start and "".join(lines[start:first]).strip():
            blocks.append(text_block("".join(lines[start:first]), theme))
        code = token.content[:-1] if token.content.endswith("\n") else token.content
        language = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
        blocks.append(Block("code", language=language, code=code))
        start = stop
    rest = "".join(lines[start:])
    if rest.strip():
        blocks.append(text_block(rest, theme))
    return blocks


def chunk_bounds(code: str, start: int = 0, first_index: int = 0) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of ``code`` from offset ``start`` (the start of chunk ``first_index``)."""
    bounds: list[tuple[int, int]] = []
    pos = start
    while True:
        stop = pos
        for _ in range(CHUNK_LINES):
            found = code.find("\n", stop)
            if found < 0:
                bounds.append((pos, len(code)))
                return bounds
            stop = found + 1
        if stop >= len(code):  # the code ends with a newline exactly at a cut: no empty chunk after it
            bounds.append((pos, len(code)))
            return bounds
        bounds.append((pos, stop))
        pos = stop


def render_chunk(code: str, stop_offset: int, language: str, style: str) -> Chunk:
    """One chunk: highlighted when its language is known and it ends within the first ``MAX_HIGHLIGHT_CHARS`` of
    its block (further on a block is shown plain, as gui.markdown shows a huge block)."""
    text = code[:-1] if code.endswith("\n") else code
    if not language or stop_offset > MAX_HIGHLIGHT_CHARS or _lexer(language.lower()) is None:
        return Chunk(text, False)
    return Chunk(_highlighted(text, language, style), True)


@functools.lru_cache(maxsize=4096)
def _highlighted(text: str, language: str, style: str) -> str:
    """Highlighted code in Qt Quick's StyledText (``<font color>``, ``<b>``, ``<i>`` in a ``<pre>``), not in
    RichText: a RichText item builds a text document and redoes its scene-graph nodes at every frame that touches
    the list (in the software renderer, 20–100 ms per frame for a 100 KB block); StyledText is laid out once."""
    lexer = _lexer(language.lower())
    assert lexer is not None
    # Runs of one look become one span, and whitespace gets none: the fewer format ranges, the cheaper the item.
    parts = ["<pre>"]
    run: list[str] = []
    current = ("", "")
    for kind, value in lexer.get_tokens(text):
        markup = current if value.isspace() else _markup(kind, style)
        if markup != current:
            if run:
                parts.append(current[0] + html.escape("".join(run), quote=False) + current[1])
            run, current = [], markup
        run.append(value)
    if run:
        parts.append(current[0] + html.escape("".join(run), quote=False) + current[1])
    parts.append("</pre>")
    return "".join(parts)


@functools.lru_cache(maxsize=1024)
def _markup(kind: _TokenType, style: str) -> tuple[str, str]:
    found = get_style_by_name(style).style_for_token(kind)
    opening, closing = "", ""
    if found.get("color"):
        opening, closing = f'<font color="#{found["color"]}">', "</font>"
    if found.get("bold"):
        opening, closing = opening + "<b>", "</b>" + closing
    if found.get("italic"):
        opening, closing = opening + "<i>", "</i>" + closing
    return opening, closing


def code_chunks(code: str, language: str, style: str) -> list[Chunk]:
    return [render_chunk(code[a:b], b, language, style) for a, b in chunk_bounds(code)]


def plain_chunk(code: str) -> Chunk:
    """The growing last chunk of a streaming block: plain until complete (highlighting a partial line flickers)."""
    return Chunk(code[:-1] if code.endswith("\n") else code, False)


@dataclass
class Tail:
    """What changed in a streaming reply since the last update."""

    stable: list[Block]  # blocks rendered for good, to add after the stable blocks already shown
    tail: list[Block]  # the blocks after them (replacing the previous tail)
    open_code: Block | None  # a code block still being written, after ``tail`` (its code is what arrived)


class StreamSplitter:
    """Follows a growing Markdown reply; ``update`` renders only what may have changed.

    A cut is the start of a line that follows a blank line outside any code fence, begins at column 0 and does not
    begin a list item: a blank line then such a line closes every open block (a list item would join the list
    before it), so what is before the cut renders the same whatever is appended. Only complete lines are looked at,
    each once. Link reference definitions further down could still change a link before a cut; models practically
    never write them, and the complete reply is rendered again as a whole anyway. Besides the cuts, the start of an
    open top-level fence is kept: while a code block is being written its code is the text after the fence's first
    line, with no Markdown parse at all.
    """

    def __init__(self, theme: Theme) -> None:
        self.theme = theme
        self.split = 0
        self.cuts: list[int] = []  # every cut, in order
        self._used = 0  # cuts already rendered up to
        self._scanned = 0
        self._fence = ""
        self._fence_start = -1  # offset of the open top-level fence's first line
        self._fence_body = -1  # offset of its code
        self._fence_language = ""
        self._blank_before = False

    def _advance(self, text: str) -> None:
        pos = self._scanned
        while (end := text.find("\n", pos)) >= 0:
            line = text[pos:end]
            stripped = line.strip()
            if self._fence:
                if stripped and set(stripped) == {self._fence[0]} and len(stripped) >= len(self._fence):
                    self._fence = ""
                    self._fence_start = self._fence_body = -1
                self._blank_before = False
            else:
                if self._blank_before and line[:1] and not line[0].isspace() and not _LIST_ITEM.match(line):
                    self.split = pos
                    self.cuts.append(pos)
                fence = _FENCE_LINE.match(stripped)
                self._fence = fence.group(1) if fence else ""
                if fence and line[:1] in ("`", "~"):  # at column 0: a top-level block
                    self._fence_start, self._fence_body = pos, end + 1
                    info = fence.group(2).strip()
                    self._fence_language = info.split(maxsplit=1)[0] if info else ""
                self._blank_before = not stripped
            pos = end + 1
        self._scanned = pos

    def scan(self, text: str) -> None:
        """Look at the complete lines of ``text`` (which extends the text of earlier calls) not yet seen."""
        self._advance(text)

    def update(self, text: str, done: int) -> tuple[int, Tail]:
        """Blocks of ``text`` past ``done`` (the end of what was rendered for good); returns the new ``done``."""
        self._advance(text)
        stable: list[Block] = []
        for cut in self.cuts[self._used :]:
            if cut > done:
                stable.extend(parse_blocks(text[done:cut], self.theme))
                done = cut
        self._used = len(self.cuts)
        if self._fence and self._fence_start >= done:
            tail = parse_blocks(text[done : self._fence_start], self.theme)
            code = text[self._fence_body :]
            return done, Tail(stable, tail, Block("code", language=self._fence_language, code=code))
        return done, Tail(stable, parse_blocks(text[done:], self.theme), None)
