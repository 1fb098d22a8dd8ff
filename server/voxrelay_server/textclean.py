"""What the server does with characters that carry no speech, before any engine sees them.

Two kinds, both made spaces so that a position in what the engine reads is the same
position in what the caller sent (the text's length is kept):

- Control characters (U+0000-U+001F and U+007F-U+009F, other than tab, line feed and
carriage return) and lone surrogates become a space as text arrives, for every engine alike. They
cannot be spoken; left in, they fail or truncate an engine's call (piper refuses
text with NUL in it, espeak-ng stops reading at the NUL), and dropped outright
they would join the words on either side. A space keeps every other character,
and the text's length, as sent. Everything else (letters of any script, emoji,
format characters such as joiners, private-use characters) is left to the engine.
- The markdown LLMs write (`**bold**`, `# headings`, bullets, code fences, link
addresses) loses its marks in each segment just before synthesis (`without_markup`):
the splitter still sees them (a heading or a list item ends a sentence), a voice does
not read them out as symbols.

Why not a markdown parser (markdown-it-py, mistune): they render a document to new
text without saying where each character came from, and both the splitter's cut
points and espeak-ng's word positions are indices into the caller's text. The marks
LLMs emit are few and line-shaped; `_MARKUP` lists them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_UNSPEAKABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with each control character and lone surrogate replaced by a space."""
    if _UNSPEAKABLE.search(text) is None:  # the common case: no copy
        return text
    return _UNSPEAKABLE.sub(" ", text)


def _blank(match: re.Match[str]) -> str:
    return " " * len(match.group())


def _blank_all_but_text(match: re.Match[str]) -> str:
    """A match with a `text` group: everything around the group becomes spaces."""
    start, end = match.span("text")
    return " " * (start - match.start()) + match.group("text") + " " * (match.end() - end)


_MARKUP: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    # A code fence line, its info string ("```python") included.
    (re.compile(r"(?m)^[ \t]*(?:```|~~~)[^\n]*$"), _blank),
    # A thematic break: a line of three or more `-`, `*` or `_`.
    (re.compile(r"(?m)^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$"), _blank),
    # A table's delimiter row, then the pipes of its rows (lines that start with one).
    (re.compile(r"(?m)^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+[ \t]*:?-*:?[ \t]*$"), _blank),
    (re.compile(r"(?m)^[ \t]*\|.*$"), lambda row: row.group().replace("|", " ")),
    # Heading marks, quote marks and bullets at the start of a line.
    (re.compile(r"(?m)^[ \t]{0,3}#{1,6}(?=[ \t]|$)"), _blank),
    (re.compile(r"(?m)^[ \t]{0,3}(?:>[ \t]?)+"), _blank),
    (re.compile(r"(?m)^[ \t]*[-*+\u2022](?=[ \t])"), _blank),
    # A link or an image: its text is read, its address is not.
    (re.compile(r"!?\[(?P<text>[^\]\n]*)\]\([^)\n]*\)"), _blank_all_but_text),
    # Emphasis and code delimiters: doubled anywhere, single at a word's edge only,
    # so "snake_case", "2*3" and "5 * 3" keep their characters.
    (re.compile(r"\*\*|__|~~|`"), _blank),
    (re.compile(r"(?<![\w*])[*_](?=[^\s*_])|(?<=[^\s*_])[*_](?![\w*])"), _blank),
]
"""Markdown an LLM writes, and what each becomes: spaces where a mark stood."""


def without_markup(text: str) -> str:
    """`text` with the markdown marks LLMs emit (emphasis, headings, bullets, quotes,
    code fences and backticks, tables, link addresses) replaced by spaces, so a voice
    does not read "asterisk asterisk"; every other character stays where it was, so a
    position in the result is the same position in `text`."""
    if not any(mark in text for mark in "*_~`#>|-+[\u2022"):  # the common case: no copy
        return text
    for pattern, replace in _MARKUP:
        text = pattern.sub(replace, text)
    return text
