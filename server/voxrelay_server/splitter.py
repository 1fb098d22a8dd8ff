"""The sentence splitter: cuts streamed text into segments worth synthesizing.

Rules (those of the reference voice pipeline, minus its defects):
- a sentence ends at `.`, `!` or `?` followed by whitespace;
- the complete sentences in the buffer are released as one segment once they
  reach `min_chars` characters; the text after the last sentence end stays
  buffered, whitespace included, so "He " + "arrived" becomes "He arrived";
- `flush()` returns whatever is buffered, so no text is ever dropped.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?]\s+")


class SentenceSplitter:
    """Accumulates text chunks and releases segments at sentence ends."""

    def __init__(self, min_chars: int) -> None:
        self._min_chars = min_chars
        self._buffer = ""

    @property
    def buffered(self) -> str:
        """Text received but not yet released."""
        return self._buffer

    def feed(self, text: str) -> str | None:
        """Add a chunk; return a segment if complete sentences reached the minimum."""
        self._buffer += text
        last_end = None
        for match in _SENTENCE_END.finditer(self._buffer):
            last_end = match
        if last_end is None:
            return None
        # Keep the punctuation, drop the whitespace that separates the segments.
        head = self._buffer[: last_end.start() + 1].strip()
        if len(head) < self._min_chars:
            return None
        self._buffer = self._buffer[last_end.end() :]
        return head

    def flush(self) -> str:
        """Return and clear everything buffered (the rest of a turn)."""
        rest, self._buffer = self._buffer, ""
        return rest

    def clear(self) -> bool:
        """Drop the buffer; return whether it held any text."""
        had_text = bool(self._buffer)
        self._buffer = ""
        return had_text
