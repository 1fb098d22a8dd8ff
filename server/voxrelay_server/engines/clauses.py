"""Text cut so that espeak-ng speaks all of it.

espeak-ng (which piper phonemizes with, too) translates a clause into a phoneme list
of fixed size, about a thousand phonemes, and silently drops the rest of the clause.
An ordinary clause is far from it (400 characters of English make about 400), but
numbers spelled out and symbols read by name can fill it within a hundred characters:
"777777777777" alone makes about 150, and a clause of nine such groups lost the rest.
So a text whose largest clause makes more than `MAX_CLAUSE_PHONEMES` is cut at the
space nearest its middle, and each half again, until every piece is well within the
list; a piece is then spoken on its own.

A long run of characters with no space loses its end another way: espeak-ng speaks
about 11 s of a run of more than 32 digits, or of 40 emoji, and drops the rest. Such a
run is cut every `MAX_RUN_CHARS` characters first.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

MAX_CLAUSE_PHONEMES = 800
"""Most IPA characters (one to three per phoneme) a piece's largest clause may make.
Every clause measured that espeak-ng cut short came to between 1,271 and 1,539."""

MAX_RUN_CHARS = 32
"""Longest run of characters with no space spoken as one: 32 digits were spoken whole
(19 s), 40 came to 11.7 s, the same as 400."""

_SPACE = re.compile(r"\s+")
_LONG_RUN = re.compile(rf"\S{{{MAX_RUN_CHARS + 1},}}")


def whole_pieces(text: str, largest_clause: Callable[[str], int]) -> list[str]:
    """`text` in pieces, in order and whole, that espeak-ng speaks whole: no run of
    characters with no space longer than `MAX_RUN_CHARS`, and no clause (as measured
    by `largest_clause`, in IPA characters) longer than its list; one piece usually."""
    cuts = [
        cut
        for run in _LONG_RUN.finditer(text)
        for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS)
    ]
    bounds = [0, *cuts, len(text)]
    return [
        piece
        for start, end in itertools.pairwise(bounds)
        for piece in _whole_clauses(text[start:end], largest_clause)
    ]


def _whole_clauses(text: str, largest_clause: Callable[[str], int]) -> list[str]:
    if len(text) < 2 or largest_clause(text) <= MAX_CLAUSE_PHONEMES:
        return [text]
    cut = _cut_near_middle(text)
    return _whole_clauses(text[:cut], largest_clause) + _whole_clauses(text[cut:], largest_clause)


def _cut_near_middle(text: str) -> int:
    """Where to cut `text` in two: after the whitespace nearest its middle, or (a
    single word) at the middle itself."""
    middle = len(text) // 2
    ends = [match.end() for match in _SPACE.finditer(text) if 0 < match.end() < len(text)]
    if not ends:
        return middle
    return min(ends, key=lambda end: abs(end - middle))
