"""gui/markdown.py: Markdown to Qt-ready HTML, safe to show and never loading anything (the module needs no Qt;
the styles are checked as Qt's rich text lays them out)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtGui import QTextBlock, QTextDocument, QTextTable

from gui.markdown import (
    DARK,
    DARK_STYLE,
    LIGHT,
    MAX_HIGHLIGHT_CHARS,
    Theme,
    code_background,
    render_markdown,
    render_plain,
)

ROOT = Path(__file__).resolve().parents[2]


def test_raw_html_in_a_message_is_shown_as_text_not_run() -> None:
    rendered = render_markdown('<script>alert("x")</script> <b onclick="evil()">bold?</b>')
    assert "<script" not in rendered.html and "<b onclick" not in rendered.html
    assert "&lt;script&gt;" in rendered.html


def test_images_become_links_and_nothing_is_fetched() -> None:
    rendered = render_markdown("look: ![a tracking pixel](https://example.com/p.png)")
    assert "<img" not in rendered.html
    assert 'href="https://example.com/p.png"' in rendered.html
    assert "[image: a tracking pixel]" in rendered.html


def test_script_links_are_not_links() -> None:
    for url in ("javascript:alert(1)", "vbscript:msgbox(1)", "file:///etc/passwd", "data:text/html;base64,AAAA"):
        rendered = render_markdown(f"[click]({url})")
        assert "href=" not in rendered.html, url


def test_links_show_their_address_as_a_tooltip() -> None:
    rendered = render_markdown("[docs](https://example.com/docs)")
    assert 'href="https://example.com/docs"' in rendered.html
    assert 'title="https://example.com/docs"' in rendered.html


def test_code_blocks_are_highlighted_and_copyable_exactly() -> None:
    source = 'def greet(name):\n    return f"hi {name}"  # <tag> & more'
    rendered = render_markdown(f"Here:\n\n```python\n{source}\n```\n")
    assert rendered.code_blocks == (source,)
    assert "<span style=" in rendered.html.split("<pre>", 1)[1]  # inline colours: Qt needs no classes
    assert "&lt;tag&gt; &amp; more" in rendered.html
    assert ">python<" in rendered.html  # the language is named above the block


def test_a_code_block_in_an_unknown_language_is_plain() -> None:
    rendered = render_markdown("```nosuchlang\na < b\n```")
    assert rendered.code_blocks == ("a < b",)
    assert "<pre>a &lt; b</pre>" in rendered.html  # escaped, no colours


def test_indented_code_and_several_blocks_are_numbered_in_order() -> None:
    text = "```\nfirst\n```\n\ntext\n\n    second\n\n```sh\nthird\n```"
    rendered = render_markdown(text)
    assert rendered.code_blocks == ("first", "second", "third")
    assert rendered.html.count("<pre>") == 3


def test_an_unclosed_fence_while_streaming_renders_as_code() -> None:
    rendered = render_markdown("Partial:\n\n```python\nfor i in range(3):\n    pri")
    assert rendered.code_blocks == ("for i in range(3):\n    pri",)


def test_huge_code_blocks_are_not_highlighted() -> None:
    code = "x = 1\n" * (MAX_HIGHLIGHT_CHARS // 6 + 10)
    rendered = render_markdown(f"```python\n{code}```")
    body = rendered.html.split("<pre>", 1)[1].split("</pre>", 1)[0]
    assert "<span" not in body
    assert rendered.code_blocks == (code[:-1],)


def test_dark_theme_uses_a_dark_code_style() -> None:
    light = render_markdown("```python\nx = 1\n```", LIGHT)
    dark = render_markdown("```python\nx = 1\n```", DARK)
    assert light.html != dark.html
    assert f'bgcolor="{code_background(DARK_STYLE)}"' in dark.html


def test_chat_markdown_features() -> None:
    rendered = render_markdown("line one\nline two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n~~gone~~ **bold** `code`")
    assert "line one<br" in rendered.html  # single newlines are kept, as typed
    assert "<table" in rendered.html and "<td>1</td>" in rendered.html
    assert "<s>gone</s>" in rendered.html
    assert "<strong>bold</strong>" in rendered.html and ">\u202fcode\u202f</code>" in rendered.html


@pytest.mark.parametrize("theme", [LIGHT, DARK], ids=["light", "dark"])
def test_quotes_have_a_bar_and_inline_code_a_background_in_qt_rich_text(theme: Theme) -> None:
    """Laid out by Qt's rich text (what the cards draw): the quote sits beside a bar in the theme's border colour,
    and inline code has a background of its own, a different one from the text around it."""
    document = QTextDocument()
    document.setHtml(render_markdown("> quoted words\n\nuse `the_call()` here", theme).html)
    table = next(frame for frame in document.rootFrame().childFrames() if isinstance(frame, QTextTable))
    assert (table.rows(), table.columns()) == (1, 2)
    bar, quote = table.cellAt(0, 0), table.cellAt(0, 1)
    assert bar.format().background().color().name() == theme.border
    assert bar.firstCursorPosition().block().text() == ""
    assert quote.firstCursorPosition().block().text() == "quoted words"

    found = document.find("the_call()")
    assert not found.isNull()
    block = found.block()
    backgrounds = {
        fragment.text(): fragment.charFormat().background().color().name()
        for fragment in (it.fragment() for it in _fragments(block))
    }
    code = next(text for text in backgrounds if "the_call()" in text)
    assert backgrounds[code] == theme.inline_code
    assert backgrounds["use "] != theme.inline_code


def _fragments(block: QTextBlock) -> Iterator[QTextBlock.iterator]:
    it = block.begin()
    while not it.atEnd():
        yield it
        it += 1


def test_plain_text_keeps_lines_and_escapes() -> None:
    assert render_plain("a < b\nc") == "<p>a &lt; b<br>c</p>"


def test_rendering_1000_messages_is_fast_enough_to_page_in() -> None:
    message = "Some **bold** text, a [link](https://example.com) and code:\n\n```python\nprint('hi')\n```\n"
    started = time.perf_counter()
    for i in range(1000):
        render_markdown(message + str(i))
    elapsed = time.perf_counter() - started
    print(f"\n1,000 messages rendered in {elapsed * 1000:.0f} ms")
    # About 0.25 s on a 2-core machine (a page of 40 is ~10 ms): only a renderer gone quadratic takes this long.
    assert elapsed < 10.0


def test_the_module_does_not_import_qt() -> None:
    code = "import sys, gui.markdown; sys.exit(any(m.startswith('PySide6') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0
