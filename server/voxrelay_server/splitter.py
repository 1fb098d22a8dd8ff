"""The sentence splitter: cuts streamed text into segments worth synthesizing.

Rules (those of the reference voice pipeline, minus its defects):
- a sentence ends at `.`, `!` or `?` followed by whitespace;
- with `first_clause_words`, the first segment of each turn ends at the first
  clause mark (`,` `;` `:` a dash or a closing bracket, followed by whitespace)
  or sentence end that has at least that many words before it: synthesis of a
  turn starts as soon as its first clause is complete, not its first sentence;
- the complete sentences in the buffer are released as one segment once they
  reach `min_chars` characters; the text after the last sentence end stays
  buffered, whitespace included, so "He " + "arrived" becomes "He arrived";
- `take_words()` releases the complete words waiting at the start of a turn
  (the caller's text stalled: they should not wait for more);
- no segment is longer than `max_chars`: text that would make a longer one is
  cut at the last sentence end that fits, else at the last clause mark (`,`
  `;` `:` a dash or a closing bracket, followed by whitespace) in the second
  half of the limit, else at the last whitespace, and only a run of over
  `max_chars` characters without any whitespace is cut inside it. An engine's
  memory and time grow with the length of what it is given, so this bounds
  the work one request can cause;
- `flush()` returns whatever is buffered, so no text is ever dropped.
"""

from __future__ import annotations

import re

_CLAUSE_MARKS = r",;:)\]\u2013\u2014"
"""End a clause when whitespace follows: `,` `;` `:` a closing bracket, an en or em dash."""
_SENTENCE_END = re.compile(r"[.!?]\s+")
_CLAUSE_END = re.compile(rf"[{_CLAUSE_MARKS}]\s")
_CLAUSE_OR_SENTENCE_END = re.compile(rf"[{_CLAUSE_MARKS}.!?]\s")
_WHITESPACE = re.compile(r"\s")
_WORD = re.compile(r"\S*\w\S*")


class SentenceSplitter:
    """Accumulates text chunks and releases segments at sentence ends."""

    def __init__(self, min_chars: int, max_chars: int, first_clause_words: int = 0) -> None:
        if max_chars < 1:
            raise ValueError(f"segments need room for at least one character, not {max_chars}")
        self._min_chars = min_chars
        self._max_chars = max_chars
        self._first_clause_words = first_clause_words
        """0: every segment ends at a sentence end (or the limit)."""
        self._buffer = ""
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
        self._buffer += text
        segments = []
        while (segment := self._next_segment()) is not None:
            segments.append(segment)
        return segments

    def flush(self) -> str:
        """Return and clear everything buffered (the rest of a turn); a new turn starts."""
        rest, self._buffer = self._buffer, ""
        self._turn_start = True
        return rest

    def clear(self) -> bool:
        """Drop the buffer; return whether it held any text. A new turn starts."""
        had_text = bool(self._buffer)
        self._buffer = ""
        self._turn_start = True
        return had_text

    def take_words(self) -> str | None:
        """At the start of a turn, release the complete words buffered (all but a word
        that may still be growing); None when there are none, or the turn has started."""
        buffer = self._buffer.lstrip()
        if not self._turn_start:
            return None
        ends = [match.start() for match in _WHITESPACE.finditer(buffer)]
        if not ends:
            return None
        self._buffer = buffer[ends[-1] :]
        self._turn_start = False
        return buffer[: ends[-1]].strip()

    def _next_segment(self) -> str | None:
        # Leading whitespace joins nothing: segments are stripped anyway.
        buffer = self._buffer.lstrip()
        if len(buffer) > self._max_chars:
            cut = self._cut_within_limit(buffer)
        elif self._turn_start and (first := self._first_clause_end(buffer)) is not None:
            cut = first
        else:
            last_end = None
            for match in _SENTENCE_END.finditer(buffer):
                last_end = match
            if last_end is None or last_end.start() + 1 < self._min_chars:
                self._buffer = buffer
                return None
            cut = last_end.end()
        self._buffer = buffer[cut:]
        self._turn_start = False
        return buffer[:cut].strip()

    def _first_clause_end(self, buffer: str) -> int | None:
        """Where the first segment of a turn ends: after the first clause mark or
        sentence end with `first_clause_words` words before it; None if none yet."""
        if not self._first_clause_words:
            return None
        words = position = 0
        for match in _CLAUSE_OR_SENTENCE_END.finditer(buffer):
            words += len(_WORD.findall(buffer, position, match.start() + 1))
            position = match.start() + 1
            if words >= self._first_clause_words:
                return position
        return None

    def _cut_within_limit(self, buffer: str) -> int:
        """Where to end a segment of `buffer`, which is over the limit: a position at
        most `max_chars` in, at the most natural boundary there is."""
        limit = self._max_chars
        window = buffer[: limit + 1]  # the character after the limit may be the whitespace
        last_end = None
        for match in _SENTENCE_END.finditer(window):
            if match.start() < limit:
                last_end = match
        if last_end is not None:
            return last_end.start() + 1
        for match in reversed(list(_CLAUSE_END.finditer(window, limit // 2))):
            if match.start() < limit:
                return match.start() + 1
        spaces = [match.start() for match in _WHITESPACE.finditer(window)]
        return spaces[-1] if spaces else limit
