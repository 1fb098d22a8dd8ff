"""A turn's word timing on its way to the caller, held until the audio it describes.

Engines say where each word of a segment is in the segment's audio, at their own rate
(`engines.base.WordTiming`). Here that becomes a place in the turn: the segment's
first sample in the turn's output (after resampling; for Ogg Opus, in the samples fed
to the turn's encoder) plus the engine's position scaled to the output rate. A word
goes out right before the first audio message whose samples reach its first sample,
so it never arrives after that audio, and never at all for audio a cancel or a
failure dropped.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable

from voxrelay_server.engines.base import WordTiming
from voxrelay_server.events import WordOut, WordsOut


class TurnWords:
    """The words of one turn whose audio has not been sent yet, in order."""

    __slots__ = ("_native_rate_hz", "_output_rate_hz", "_pending", "turn", "word_ended")

    def __init__(
        self,
        turn: int,
        native_rate_hz: int,
        output_rate_hz: int,
        word_ended: Callable[[int, int], None],
    ) -> None:
        self.turn = turn
        self._native_rate_hz = native_rate_hz
        self._output_rate_hz = output_rate_hz
        self._pending: collections.deque[tuple[int, WordOut]] = collections.deque()
        self.word_ended = word_ended
        """Told (end sample, end in the text) of each word sent, in order: what a
        listener who stopped at a sample heard."""

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(
        self,
        segment: int,
        text: str,
        text_offset: int,
        audio_start: int,
        words: tuple[WordTiming, ...],
    ) -> None:
        """The engine's timing of `words` of segment `segment`, whose `text` starts at
        `text_offset` in the turn's text and whose audio at sample `audio_start`."""
        scale = self._output_rate_hz / self._native_rate_hz
        for word in words:
            begin = word.text_offset
            self._pending.append(
                (
                    segment,
                    WordOut(
                        text[begin : begin + word.text_length],
                        text_offset + begin,
                        audio_start + round(word.start_sample * scale),
                        audio_start + round(word.end_sample * scale),
                    ),
                )
            )

    def due(self, before: int) -> list[WordsOut]:
        """The words starting before sample `before` (sent next), one message a segment."""
        pending = self._pending
        taken: list[tuple[int, WordOut]] = []
        while pending and pending[0][1].start_samples < before:
            taken.append(pending.popleft())
        return self._messages(taken, None)

    def rest(self, segment: int, audio_end: int) -> list[WordsOut]:
        """The words of `segment` and before still held once all of the segment's audio
        was sent and ends at `audio_end` (rounding left them at or past its end)."""
        pending = self._pending
        taken: list[tuple[int, WordOut]] = []
        while pending and pending[0][0] <= segment:
            taken.append(pending.popleft())
        return self._messages(taken, audio_end)

    def clear(self) -> None:
        """Drop every word not sent: its audio will not be."""
        self._pending.clear()

    def _messages(self, taken: list[tuple[int, WordOut]], clamp: int | None) -> list[WordsOut]:
        if clamp is not None:
            taken = [
                (
                    segment,
                    WordOut(
                        word.text,
                        word.text_offset,
                        min(word.start_samples, clamp),
                        min(word.end_samples, clamp),
                    ),
                )
                for segment, word in taken
            ]
        for _, word in taken:
            self.word_ended(word.end_samples, word.text_offset + len(word.text))
        return [
            WordsOut(self.turn, segment, tuple(word for _, word in group))
            for segment, group in itertools.groupby(taken, key=lambda item: item[0])
        ]
