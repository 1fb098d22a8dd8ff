"""The sentence splitter: cuts streamed text into segments worth synthesizing.

Where sentences end is sentencex's call (rules for some 300 languages: titles
and abbreviations such as "Dr." "e.g." "U.S." "p.m.", decimals and prices,
initials, ellipses, URLs and email addresses, numbered lists, and the sentence
marks of every script, `。` `！` `？` `।` `؟` `։` `።` among them, with or
without a space after). The rules on top of it:

- a sentence end counts once text follows it; at the end of the text so far, it
  counts when sentencex would end the sentence before a sentence-starting word and
  the mark does not end an initial, an initialism or a title ("Ready. " and "of May. "
  are released at once, "Dr. ", "U.S. " and "p.m. " wait for the next word), and
  never after a list number ("2. ") or an ellipsis, which the next word decides;
- closing quotes, brackets and markdown emphasis after a sentence mark stay with
  their sentence; a line break ends a sentence before a markdown block (a heading,
  a list item, a quote, a code fence) and after a heading or list item;
- with `first_clause_words`, the first segment of each turn ends at the first
  clause mark (`,` `;` `:` a dash or a closing bracket followed by whitespace;
  `，` `、` `；` `：` of CJK text) or sentence end that has at least that many
  words before it (each CJK character a word): synthesis of a turn starts as
  soon as its first clause is complete, not its first sentence;
- the complete sentences in the buffer are released as one segment once they
  reach `min_chars` characters; the text after the last sentence end stays
  buffered, whitespace included, so "He " + "arrived" becomes "He arrived";
- `take_words()` releases the complete words waiting (the caller's text stalled
  at the start of a turn, or the listener is about to hear all that was released:
  they should not wait for more);
- no segment is longer than `max_chars`: text that would make a longer one is
  cut at the last sentence end that fits, else at the last clause mark in the
  second half of the limit, else at the last whitespace, and only a run of over
  `max_chars` characters without any whitespace is cut inside it. An engine's
  memory and time grow with the length of what it is given, so this bounds
  the work one request can cause (and sentencex never reads more than
  `max_chars` characters at a time);
- `flush()` returns whatever is buffered, so no text is ever dropped.

Each segment's place in the turn's text is tracked (`Segment.offset`): the splitter
counts the characters of the turn consumed before its buffer, the whitespace it
strips included, so that a listener can be told which text a segment's audio speaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sentencex

_IDEOGRAPHS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""Kana and Han: scripts written without spaces, where a character is about a word."""
_CLAUSE_MARKS = r",;:)\]\u2013\u2014"
"""End a clause when whitespace follows: `,` `;` `:` a closing bracket, an en or em dash."""
_CLAUSE_END = re.compile(rf"[{_CLAUSE_MARKS}](?=\s)|[\uff0c\u3001\uff1b\uff1a]")
"""Where a clause ends (the mark itself): a mark above, or a CJK comma, enumeration
comma, semicolon or colon, which need no space after them."""
_WHITESPACE = re.compile(r"\s")
_WORD = re.compile(rf"[{_IDEOGRAPHS}]|[^\s{_IDEOGRAPHS}]*\w[^\s{_IDEOGRAPHS}]*")
_CLOSERS = re.compile(r"[\"'\u201d\u2019\u00bb\u300d\u300f)\]}*_~`]*")
"""What may follow a sentence mark and still belong to its sentence."""
_LIST_NUMBER = re.compile(r"(?:^|[\n:])[ \t]*[(\[]?\d+[.)]$")
"""Text ending in a list item's number ("1." at the start of a line or after a colon):
its sentence has not begun."""
_ELLIPSIS = re.compile(r"(?:\.\.\.|\u2026)$")
"""At the end of the text so far, an ellipsis may end a sentence or pause inside one."""
_BLOCK = r"[ \t]*(?:#{1,6}\s|[-*+\u2022][ \t]|\d+[.)][ \t]|>|```|~~~)"
_LINE_BREAK_END = re.compile(rf"(?m)(?:^{_BLOCK}.*\n|\n(?={_BLOCK}))")
"""A line break that ends a sentence (the match ends after it): one closing a markdown
heading or list item, or one opening such a block."""
_STANDALONE_STOP = re.compile(
    "[\u3002\uff01\uff1f\uff61\u0964\u0965\u061f\u0589\u1362\u1367\u1368]$"
)
"""Sentence marks that end a sentence with no space after them, and never stand inside
a word or a number (`。` `！` `？` `।` `॥` `؟` `։` `።` `፧` `፨`), unlike `.`, as in "3." + "50"."""
_PROBE = "The"
"""A word that starts a sentence: if sentencex cuts before it, the text so far may end
in a sentence end (a single capital would read as an initial, and hold "of May. ")."""
_CONTINUED = re.compile(
    r"(?:^|[\s(\[])(?:(?:[^\W\d_]\.)+|(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Sr|Jr|Mt|Gen|Gov|Sen|Rep|Lt|Col"
    r"|Capt|Sgt|Rev|Hon|vs|No|Nos|Fig|fig|approx|cf|ca)\.)$"
)
"""What the next word decides at the end of the text so far: an initial or initialism
("J." "U.S." "e.g." "p.m.") or a title or abbreviation that usually goes on ("Dr." "vs.")."""


@dataclass(frozen=True)
class Segment:
    """A released segment: its text (stripped of surrounding whitespace) and where it
    starts in the turn's text, in characters (code points), so that
    `turn_text[offset:offset + len(text)] == text`."""

    text: str
    offset: int

    @property
    def end(self) -> int:
        """Where the segment ends in the turn's text (exclusive)."""
        return self.offset + len(self.text)


class SentenceSplitter:
    """Accumulates text chunks and releases segments at sentence ends.

    `feed_segments`, `take_segment` and `flush_segment` give each segment with its
    place in the turn; `feed`, `take_words` and `flush` are their plain-text views.
    """

    def __init__(
        self, min_chars: int, max_chars: int, first_clause_words: int = 0, language: str = "en"
    ) -> None:
        """`language`: an ISO 639 code (a BCP-47 tag's first part) choosing sentencex's
        rules; languages it does not know get its general ones."""
        if max_chars < 1:
            raise ValueError(f"segments need room for at least one character, not {max_chars}")
        self._min_chars = min_chars
        self._max_chars = max_chars
        self._first_clause_words = first_clause_words
        """0: every segment ends at a sentence end (or the limit)."""
        self._language = language.split("-")[0].lower() or "en"
        self._buffer = ""
        self._consumed = 0
        """Characters of the current turn before the buffer (released or stripped)."""
        self._turn_start = True
        """No segment of the current turn has been released yet."""

    @property
    def at_turn_start(self) -> bool:
        """Whether no segment of the current turn has been released yet."""
        return self._turn_start

    @property
    def buffered(self) -> str:
        """Text received but not yet released (never more than `max_chars` after a feed)."""
        return self._buffer

    def feed(self, text: str) -> list[str]:
        """Add a chunk; return the segments it completes, in order (often none)."""
        return [segment.text for segment in self.feed_segments(text)]

    def feed_segments(self, text: str) -> list[Segment]:
        """`feed`, each segment with its place in the turn's text."""
        self._buffer += text
        segments = []
        while (segment := self._next_segment()) is not None:
            segments.append(segment)
        return segments

    def flush(self) -> str:
        """Return and clear everything buffered (the rest of a turn); a new turn starts."""
        rest, self._buffer = self._buffer, ""
        self._new_turn()
        return rest

    def flush_segment(self) -> Segment | None:
        """`flush`, as a stripped segment with its place; None when only whitespace
        was buffered."""
        rest = self._buffer
        stripped = rest.lstrip()
        offset = self._consumed + len(rest) - len(stripped)
        self.flush()
        text = stripped.rstrip()
        return Segment(text, offset) if text else None

    def clear(self) -> bool:
        """Drop the buffer; return whether it held any text. A new turn starts."""
        had_text = bool(self._buffer)
        self._buffer = ""
        self._new_turn()
        return had_text

    def take_words(self) -> str | None:
        """Release the complete words buffered (all but a word that may still be
        growing); None when there are none."""
        segment = self.take_segment()
        return None if segment is None else segment.text

    def take_segment(self) -> Segment | None:
        """`take_words`, as a segment with its place in the turn's text."""
        buffer = self._lstripped_buffer()
        ends = [match.start() for match in _WHITESPACE.finditer(buffer)]
        if not ends:
            return None
        self._turn_start = False
        return self._release(ends[-1])

    def _new_turn(self) -> None:
        self._consumed = 0
        self._turn_start = True

    def _lstripped_buffer(self) -> str:
        """Drop the buffer's leading whitespace (segments are stripped anyway), counting
        it as consumed; return the buffer."""
        buffer = self._buffer.lstrip()
        self._consumed += len(self._buffer) - len(buffer)
        self._buffer = buffer
        return buffer

    def _release(self, cut: int) -> Segment:
        """Release the (lstripped) buffer's first `cut` characters as a segment."""
        buffer = self._buffer
        segment = Segment(buffer[:cut].rstrip(), self._consumed)
        self._buffer = buffer[cut:]
        self._consumed += cut
        return segment

    def sentence_ends(self, text: str) -> list[int]:
        """Where sentences end in `text`, the start of a stream's text so far: positions
        just after each sentence (its closing quotes and brackets included), ascending."""
        ends = set()
        for boundary in sentencex.get_sentence_boundaries(self._language, text)[:-1]:
            ends.add(self._after_closers(text, boundary["end_index"]))
        ends.update(match.end() for match in _LINE_BREAK_END.finditer(text))
        if text[-1:].isspace() or _STANDALONE_STOP.search(text):
            probed = sentencex.get_sentence_boundaries(self._language, text + _PROBE)
            if len(probed) > 1 and probed[-1]["start_index"] >= len(text.rstrip()):
                last = text.rstrip()
                if _ELLIPSIS.search(last) is None and _CONTINUED.search(last) is None:
                    ends.add(self._after_closers(text, len(last)))
        kept = []
        for end in sorted(ends):
            before = len(text[:end].rstrip())
            # A list number is short: look at the end only, or a text of many ends
            # would cost its length squared.
            if before and _LIST_NUMBER.search(text, max(0, before - 16), before) is None:
                kept.append(end)
        return kept

    @staticmethod
    def _after_closers(text: str, end: int) -> int:
        """`end` moved past the sentence's closing marks, to where the next one starts."""
        stripped = len(text[:end].rstrip())
        match = _CLOSERS.match(text, stripped)
        return max(end, match.end()) if match else end

    def _next_segment(self) -> Segment | None:
        # Leading whitespace joins nothing: segments are stripped anyway.
        buffer = self._lstripped_buffer()
        if not buffer:
            return None
        if len(buffer) > self._max_chars:
            cut = self._cut_within_limit(buffer)
        else:
            ends = self.sentence_ends(buffer)
            first = self._first_clause_end(buffer, ends) if self._turn_start else None
            if first is not None:
                cut = first
            elif ends and len(buffer[: ends[-1]].rstrip()) >= self._min_chars:
                cut = ends[-1]
            else:
                return None
        self._turn_start = False
        return self._release(cut)

    def _first_clause_end(self, buffer: str, sentence_ends: list[int]) -> int | None:
        """Where the first segment of a turn ends: after the first clause mark or
        sentence end with `first_clause_words` words before it; None if none yet."""
        if not self._first_clause_words:
            return None
        clause_ends = [match.end() for match in _CLAUSE_END.finditer(buffer)]
        words = position = 0
        for end in sorted({*clause_ends, *sentence_ends}):
            words += len(_WORD.findall(buffer, position, end))
            position = end
            if words >= self._first_clause_words:
                return end
        return None

    def _cut_within_limit(self, buffer: str) -> int:
        """Where to end a segment of `buffer`, which is over the limit: a position at
        most `max_chars` in, at the most natural boundary there is."""
        limit = self._max_chars
        window = buffer[: limit + 1]  # the character after the limit may be the whitespace
        ends = [end for end in self.sentence_ends(window) if end <= limit]
        if ends:
            return ends[-1]
        for match in reversed(list(_CLAUSE_END.finditer(window, limit // 2))):
            if match.end() <= limit:
                return match.end()
        spaces = [match.start() for match in _WHITESPACE.finditer(window)]
        return spaces[-1] if spaces else limit
