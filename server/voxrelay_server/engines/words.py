"""Words of a segment's text, and their timing in its audio, engine-neutral.

A word is a run of characters without whitespace that holds a letter, a digit or a
symbol (Unicode categories L, N, S), with the punctuation at either end left out:
`"Hello,` is the word `Hello`, `$5` and `5%` are words, a lone `--` or `...` is not.
Scripts written without spaces make one word of a whole run. Every engine that gives
word timing reports exactly these words, each once, in order.

`WordClock` puts an engine's audio and its words' timing into one ordered stream:
each word's timing (start and end) goes out before the audio chunk holding its first
sample, so audio is held back only while a word starting in it has not ended yet.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Sequence

from voxrelay_server.engines.base import SynthesisItem, WordTiming

_TOKEN = re.compile(r"\S+")


def _is_edge_punctuation(character: str) -> bool:
    return unicodedata.category(character).startswith("P")


def spoken_words(text: str) -> list[tuple[int, int]]:
    """Where each word of `text` is, as (start, end) indices in code points."""
    spans = []
    for token in _TOKEN.finditer(text):
        start, end = token.span()
        while start < end and _is_edge_punctuation(text[start]):
            start += 1
        while end > start and _is_edge_punctuation(text[end - 1]):
            end -= 1
        if start < end:
            spans.append((start, end))
    return spans


class WordClock:
    """Orders one segment's audio and word timing, as an engine learns them.

    The engine says where words start (`start`) and where the word being spoken ends
    (`end`; a word also ends where the next one starts), and hands over its audio
    (`audio`). Each call returns the items ready to go out, in order: a tuple of
    timings, then the audio chunk holding their first samples. A word the engine never
    reported takes a share, by length, of the word before it when that one was still
    being spoken when the next was reported (the engine said them as one), and else no
    time, at the start of the next word reported or at the end of the audio. Sample
    positions are in the segment's audio at the engine's rate; timings are clamped to
    the audio made.
    """

    def __init__(self, words: Sequence[tuple[int, int]]) -> None:
        self._words = list(words)
        self._starts = [start for start, _ in self._words]
        self._next = 0
        """The first word not started yet."""
        self._open: tuple[int, int] | None = None
        """The word being spoken: its index, its first sample."""
        self._closed: list[WordTiming] = []
        """Words with a start and an end, not yet sent."""
        self._held: list[bytes] = []
        self._samples = 0
        """Samples handed over by the engine (sent or held)."""
        self._sent_samples = 0

    def word_at(self, character: int) -> int | None:
        """The index of the word holding `character`, or of the first word after it;
        None past the last word."""
        index = bisect.bisect_right(self._starts, character) - 1
        if index >= 0 and character < self._words[index][1]:
            return index
        return index + 1 if index + 1 < len(self._words) else None

    def start(self, index: int, sample: int) -> None:
        """Word `index` starts at `sample`; words before it not started yet take none.
        A word already started (the engine reports parts of some words) is ignored."""
        if index < self._next:
            return
        if self._open is not None and index > self._next:
            self._share(self._open, index, sample)
        self.end(sample)
        sample = max(sample, self._last_sample())
        while self._next < index:
            self._close(self._next, sample, sample)
            self._next += 1
        self._open = (index, sample)
        self._next = index + 1

    def _share(self, open_word: tuple[int, int], index: int, sample: int) -> None:
        """The word being spoken and the words after it up to `index`, never reported,
        were spoken together (espeak-ng says "in the" as one word) until `sample`: each
        gets a share of that time by its length in characters."""
        first, start = open_word
        lengths = [end - begin for begin, end in self._words[first:index]]
        total = sum(lengths)
        position = start
        for offset in range(len(lengths)):
            end = start + (sample - start) * sum(lengths[: offset + 1]) // total
            self._close(first + offset, position, end)
            position = end
        self._open = None
        self._next = index

    def end(self, sample: int) -> None:
        """The word being spoken (if any) ends at `sample` (a pause, a clause's end)."""
        if self._open is not None:
            index, start = self._open
            self._open = None
            self._close(index, start, max(start, sample))

    def audio(self, chunk: bytes) -> list[SynthesisItem]:
        """Take the engine's next chunk; return what can go out now."""
        if chunk:
            self._held.append(chunk)
            self._samples += len(chunk) // 2
        return self._ready(final=False)

    def finish(self) -> list[SynthesisItem]:
        """The engine is done: every word left ends with the audio; the rest goes out."""
        self.end(self._samples)
        while self._next < len(self._words):
            self._close(self._next, self._samples, self._samples)
            self._next += 1
        return self._ready(final=True)

    def _last_sample(self) -> int:
        return self._closed[-1].end_sample if self._closed else 0

    def _close(self, index: int, start: int, end: int) -> None:
        first, last = self._words[index]
        self._closed.append(WordTiming(first, last - first, start, end))

    def _ready(self, *, final: bool) -> list[SynthesisItem]:
        """Held chunks whose words have all ended (every chunk when `final`), each after
        the timings of the words starting in it."""
        out: list[SynthesisItem] = []
        open_from = self._open[1] if self._open is not None else None
        while self._held:
            chunk_end = self._sent_samples + len(self._held[0]) // 2
            if not final and open_from is not None and open_from < chunk_end:
                break  # a word starting in it has no end yet
            starting = [w for w in self._closed if w.start_sample < chunk_end or final]
            if starting:
                self._closed = self._closed[len(starting) :]
                out.append(tuple(self._clamped(starting)))
            chunk = self._held.pop(0)
            self._sent_samples += len(chunk) // 2
            out.append(chunk)
        if final and self._closed:  # words starting at the very end of the audio
            out.insert(len(out) - 1 if out else 0, tuple(self._clamped(self._closed)))
            self._closed = []
        return out

    def _clamped(self, words: list[WordTiming]) -> list[WordTiming]:
        total = self._samples
        return [
            WordTiming(
                w.text_offset,
                w.text_length,
                min(w.start_sample, total),
                min(max(w.end_sample, w.start_sample), total),
            )
            for w in words
        ]
