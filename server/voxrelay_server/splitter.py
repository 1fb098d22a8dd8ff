"""The sentence splitter: cuts streamed text into segments worth synthesizing.

Rules (those of the reference voice pipeline, minus its defects):
- a sentence ends at `.`, `!` or `?` followed by whitespace;
- the complete sentences in the buffer are released as one segment once they
  reach `min_chars` characters; the text after the last sentence end stays
  buffered, whitespace included, so "He " + "arrived" becomes "He arrived";
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

_SENTENCE_END = re.compile(r"[.!?]\s+")
_CLAUSE_END = re.compile(r"[,;:)\]\u2013\u2014]\s")
_WHITESPACE = re.compile(r"\s")


class SentenceSplitter:
    """Accumulates text chunks and releases segments at sentence ends."""

    def __init__(self, min_chars: int, max_chars: int) -> None:
        if max_chars < 1:
            raise ValueError(f"segments need room for at least one character, not {max_chars}")
        self._min_chars = min_chars
        self._max_chars = max_chars
        self._buffer = ""

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
        """Return and clear everything buffered (the rest of a turn)."""
        rest, self._buffer = self._buffer, ""
        return rest

    def clear(self) -> bool:
        """Drop the buffer; return whether it held any text."""
        had_text = bool(self._buffer)
        self._buffer = ""
        return had_text

    def _next_segment(self) -> str | None:
        # Leading whitespace joins nothing: segments are stripped anyway.
        buffer = self._buffer.lstrip()
        if len(buffer) > self._max_chars:
            cut = self._cut_within_limit(buffer)
        else:
            last_end = None
            for match in _SENTENCE_END.finditer(buffer):
                last_end = match
            if last_end is None or last_end.start() + 1 < self._min_chars:
                self._buffer = buffer
                return None
            cut = last_end.end()
        self._buffer = buffer[cut:]
        return buffer[:cut].strip()

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
