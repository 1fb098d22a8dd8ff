"""Text cut so that espeak-ng speaks all of it.

espeak-ng (which piper phonemizes with, too) translates a clause into a phoneme list
of fixed size, about a thousand phonemes, and silently drops the rest of the clause.
An ordinary clause is far from it (400 characters of English make about 400), but
numbers spelled out and symbols read by name can fill it within a hundred characters:
"777777777777" alone makes about 150, and a clause of nine such groups lost the rest.
So a text whose largest clause makes more than `MAX_CLAUSE_PHONEMES` is cut at the
space nearest its middle, and each half again, until every piece is well within the
list; a piece is then spoken on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_CLAUSE_PHONEMES = 800
"""Most IPA characters (one to three per phoneme) a piece's largest clause may make.
Every clause measured that espeak-ng cut short came to between 1,271 and 1,539."""

_SPACE = re.compile(r"\s+")


def whole_pieces(text: str, largest_clause: Callable[[str], int]) -> list[str]:
    """`text` in pieces, in order and whole, whose largest clause (as measured by
    `largest_clause`, in IPA characters) espeak-ng keeps whole; one piece usually."""
    if len(text) < 2 or largest_clause(text) <= MAX_CLAUSE_PHONEMES:
        return [text]
    cut = _cut_near_middle(text)
    return whole_pieces(text[:cut], largest_clause) + whole_pieces(text[cut:], largest_clause)


def _cut_near_middle(text: str) -> int:
    """Where to cut `text` in two: after the whitespace nearest its middle, or (a
    single word) at the middle itself."""
    middle = len(text) // 2
    ends = [match.end() for match in _SPACE.finditer(text) if 0 < match.end() < len(text)]
    if not ends:
        return middle
    return min(ends, key=lambda end: abs(end - middle))
