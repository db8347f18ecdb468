"""HTML and plain text to clean text: blocks separated by a blank line, LaTeX kept as written.

The output is the text a reader would see, one block (paragraph, list item, quote, code block) per
paragraph. Block boundaries matter downstream: sentences never cross them, so a list item without a
full stop does not swallow the next one.
"""

from __future__ import annotations

import re
import warnings

from bs4 import BeautifulSoup, Comment, Doctype, MarkupResemblesLocatorWarning, NavigableString, Tag

# Math spans in the order TeX users write them. Inline `$...$` is capped in length so a stray
# dollar sign ("costs $5") cannot mask a whole paragraph.
MATH_RE = re.compile(
    r"\$\$.+?\$\$"
    r"|\\\[.+?\\\]"
    r"|\\begin\{([A-Za-z]+\*?)\}.+?\\end\{\1\}"
    r"|\\\(.+?\\\)"
    r"|(?<![\\$])\$(?!\$)(?:\\.|[^$\\]){1,400}?\$",
    re.S,
)

_BLOCK = "\x00"  # a marker no HTML text contains: where one block ends and the next starts
_BLOCK_TAGS = frozenset(
    "address article aside blockquote dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p section table tbody thead tfoot tr td th ul".split()
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "noscript", "template"})
_WS_RE = re.compile(r"\s+")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_PARAGRAPH_RE = re.compile(r"\n[ \t\r\f\v]*\n")


def mask_math(text: str, fill: str = "x") -> str:
    """The same text with every math span replaced by `fill` characters of the same length.

    Offsets are preserved, so a splitter can run on the masked text and cut the original.
    """
    return MATH_RE.sub(lambda m: fill * len(m.group(0)), text)


def replace_lone_surrogates(text: str) -> str:
    """JSON can carry half an emoji (`"\\ud83d"`); UTF-8 cannot. Replace such halves with U+FFFD."""
    if text.isascii():
        return text
    return _SURROGATE_RE.sub("\ufffd", text)


def normalize_block(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def block_spans(masked: str) -> list[tuple[int, int]]:
    """(start, end) of each block of a math-masked text: blank (or whitespace-only) lines separate."""
    spans, start = [], 0
    for m in _PARAGRAPH_RE.finditer(masked):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(masked)))
    return spans


def text_to_blocks(text: str) -> list[str]:
    """Plain text or markdown: blocks are separated by blank lines, never inside a math span."""
    blocks = (text[a:b] for a, b in block_spans(mask_math(text)))
    return [b for b in map(normalize_block, blocks) if b]


def html_to_blocks(html: str, code_blocks: str = "placeholder", images: str = "alt") -> list[str]:
    """Stack Exchange style HTML -> clean text blocks.

    Entities are decoded (`&lt;` inside `$a &lt; b$` becomes `<`, as its author wrote it); links keep
    their text; `<pre>` code blocks become `[code]` (or are kept / dropped); images become
    `[image: alt text]` (or `[image]`, or nothing).
    """
    html = replace_lone_surrogates(html)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(html, "html.parser")
    parts: list[str] = []
    _walk(soup, parts, code_blocks, images)
    return [b for b in map(normalize_block, "".join(parts).split(_BLOCK)) if b]


def _walk(node: Tag, parts: list[str], code_blocks: str, images: str) -> None:
    for child in node.children:
        if isinstance(child, (Comment, Doctype)):
            continue
        if isinstance(child, NavigableString):
            parts.append(str(child))
            continue
        if not isinstance(child, Tag):
            continue
        name = child.name.lower()
        if name in _SKIP_TAGS:
            continue
        if name == "pre":
            if code_blocks == "keep":
                parts += [_BLOCK, child.get_text(), _BLOCK]
            elif code_blocks == "placeholder":
                parts += [_BLOCK, "[code]", _BLOCK]
            continue
        if name == "img":
            alt = normalize_block(str(child.get("alt") or ""))
            if images == "alt" and alt:
                parts.append(f" [image: {alt}] ")
            elif images != "drop":
                parts.append(" [image] ")
            continue
        if name == "br":
            parts.append("\n")
            continue
        block = name in _BLOCK_TAGS
        if block:
            parts.append(_BLOCK)
        _walk(child, parts, code_blocks, images)
        if block:
            parts.append(_BLOCK)


def clean_to_blocks(text: str, markup: str, code_blocks: str = "placeholder", images: str = "alt") -> list[str]:
    text = replace_lone_surrogates(text)
    if markup == "html":
        return html_to_blocks(text, code_blocks=code_blocks, images=images)
    return text_to_blocks(text)


def join_blocks(blocks: list[str]) -> str:
    return "\n\n".join(blocks)
