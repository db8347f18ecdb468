"""HTML and plain text to clean text: blocks separated by a blank line, LaTeX kept as written.

The output is the text a reader would see, one block (paragraph, list item, quote, code block) per
paragraph. Block boundaries matter downstream: sentences never cross them, so a list item without a
full stop does not swallow the next one.
"""

from __future__ import annotations

import re
import warnings

from bs4 import BeautifulSoup, Comment, Doctype, MarkupResemblesLocatorWarning, NavigableString, Tag

# Math spans in the order TeX users write them: $$...$$, \[...\], \begin{env}...\end{env}, \(...\), and
# inline $...$, whose body is capped in length so a stray dollar sign ("costs $5") cannot mask a whole
# paragraph. `mask_math` finds the openers with one regex and each closer with `str.find`: a regex with
# lazy `.+?` bodies rescans to the end of the text for every unclosed opener, which made a post of 20k
# stray `\[` take seconds (quadratic).
_OPENER_RE = re.compile(r"\$\$|\\\[|\\begin\{([A-Za-z]+\*?)\}|\\\(|(?<![\\$])\$(?!\$)")
_INLINE_BODY_RE = re.compile(r"(?:\\.|[^$\\]){1,400}?\$", re.S)  # after an inline `$`, up to its closing `$`
_CLOSERS = {"$$": "$$", "\\[": "\\]", "\\(": "\\)"}
_BLOCK = "\x00"  # a marker no HTML text contains: where one block ends and the next starts
_BLOCK_TAGS = frozenset(
    "address article aside blockquote dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p section table tbody thead tfoot tr td th ul".split()
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "noscript", "template"})
_WS_RE = re.compile(r"\s+")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# Control characters that are not whitespace: junk in any text, and NUL is the block marker above. An
# entity (`&#1;`) can produce them after parsing too, so every piece of text is scrubbed, not just the input.
_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1b\x7f]")
_PARAGRAPH_RE = re.compile(r"\n[ \t\r\f\v]*\n")


def mask_math(text: str, fill: str = "x") -> str:
    """The same text with every math span replaced by `fill` characters of the same length.

    Offsets are preserved, so a splitter can run on the masked text and cut the original. Linear in the
    text: once a closer is known to be absent from the rest of the text, later openers of its kind are
    skipped without searching again.
    """
    spans: list[tuple[int, int]] = []
    unclosed: set[str] = set()  # closers not found after some position: not found after any later one
    pos = 0
    while (m := _OPENER_RE.search(text, pos)) is not None:
        start, opener = m.start(), m.group(0)
        end = -1
        if opener == "$":
            body = _INLINE_BODY_RE.match(text, m.end())
            end = body.end() if body else -1
        else:
            closer = _CLOSERS.get(opener) or f"\\end{{{m.group(1)}}}"
            if closer not in unclosed:
                found = text.find(closer, m.end() + 1)  # the body is at least one character
                if found < 0:
                    unclosed.add(closer)
                else:
                    end = found + len(closer)
        if end < 0:
            pos = start + 1
            continue
        spans.append((start, end))
        pos = end
    if not spans:
        return text
    out, last = [], 0
    for a, b in spans:
        out += [text[last:a], fill * (b - a)]
        last = b
    out.append(text[last:])
    return "".join(out)


def replace_lone_surrogates(text: str) -> str:
    """JSON can carry half an emoji (`"\\ud83d"`); UTF-8 cannot. Replace such halves with U+FFFD."""
    if text.isascii():
        return text
    return _SURROGATE_RE.sub("\ufffd", text)


def scrub(text: str) -> str:
    """Lone surrogates -> U+FFFD, control characters that are not whitespace -> a space."""
    return _CONTROL_RE.sub(" ", replace_lone_surrogates(text))


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
    text = scrub(text)
    blocks = (text[a:b] for a, b in block_spans(mask_math(text)))
    return [b for b in map(normalize_block, blocks) if b]


def html_to_blocks(html: str, code_blocks: str = "placeholder", images: str = "alt") -> list[str]:
    """Stack Exchange style HTML -> clean text blocks.

    Entities are decoded (`&lt;` inside `$a &lt; b$` becomes `<`, as its author wrote it); links keep
    their text; `<pre>` code blocks become `[code]` (or are kept / dropped); images become
    `[image: alt text]` (or `[image]`, or nothing).
    """
    html = scrub(html)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(html, "html.parser")
    parts: list[str] = []
    _walk(soup, parts, code_blocks, images)
    return [b for b in map(normalize_block, "".join(parts).split(_BLOCK)) if b]


def _walk(root: Tag, parts: list[str], code_blocks: str, images: str) -> None:
    """Depth-first over the tree with an explicit stack: nesting depth is the input's to choose (20k
    unclosed `<b>` is valid HTML to the parser), and Python's recursion limit is a thousand."""
    stack: list[object] = [iter(root.children)]
    while stack:
        top = stack[-1]
        if isinstance(top, str):  # a block's closing marker, queued when the block was entered
            parts.append(stack.pop())
            continue
        child = next(top, None)
        if child is None:
            stack.pop()
            continue
        if isinstance(child, (Comment, Doctype)):
            continue
        if isinstance(child, NavigableString):
            parts.append(scrub(str(child)))
            continue
        if not isinstance(child, Tag):
            continue
        name = child.name.lower()
        if name in _SKIP_TAGS:
            continue
        if name == "pre":
            if code_blocks == "keep":
                parts += [_BLOCK, scrub(child.get_text()), _BLOCK]
            elif code_blocks == "placeholder":
                parts += [_BLOCK, "[code]", _BLOCK]
            continue
        if name == "img":
            alt = normalize_block(scrub(str(child.get("alt") or "")))
            if images == "alt" and alt:
                parts.append(f" [image: {alt}] ")
            elif images != "drop":
                parts.append(" [image] ")
            continue
        if name == "br":
            parts.append("\n")
            continue
        if name in _BLOCK_TAGS:
            parts.append(_BLOCK)
            stack.append(_BLOCK)  # emitted after the children
        stack.append(iter(child.children))


def clean_to_blocks(text: str, markup: str, code_blocks: str = "placeholder", images: str = "alt") -> list[str]:
    if markup == "html":
        return html_to_blocks(text, code_blocks=code_blocks, images=images)
    return text_to_blocks(text)


def join_blocks(blocks: list[str]) -> str:
    return "\n\n".join(blocks)
