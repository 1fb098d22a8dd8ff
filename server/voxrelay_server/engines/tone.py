"""A deterministic synthetic engine for tests and benchmarks.

It speaks a square wave whose amplitude identifies the segment's text
(`ToneEngine.amplitude_for(text)`), so a listener can prove which segment a
sample came from. Timing is configurable: `first_audio_ms` before the first
chunk, then audio of `ms_per_char` per character of text, produced at
`realtime_factor` seconds of work per second of audio (0 = at once).

Directives inside the text, for tests: `[[latency_ms=N]]` overrides the first
audio latency of that segment, `[[fail]]` makes the segment fail half-way,
`[[hold_ms=N]]` then holds the event loop's thread for N ms (a blocking call, as
an engine that ran blocking code on the loop would: nothing else in the server
runs meanwhile, timers and cancellation included).

Word timing is exact by construction: every character spoken (directives are not)
takes the same number of samples, so a word lasts from its first character's first
sample to its last character's last.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from voxrelay_server.engines.base import (
    SpeechEngine,
    SynthesisItem,
    SynthesisOptions,
    VoiceInfo,
    WordTiming,
)
from voxrelay_server.engines.words import spoken_words
from voxrelay_server.errors import EngineError, ErrorCode

ENGINE_NAME = "tone"
VOICE_NAME = f"{ENGINE_NAME}/square"
SAMPLE_RATE_HZ = 16000
FRAME_MS = 20
"""Paced audio (`realtime_factor` > 0) comes in frames of this length; instant audio
comes a second at a time, as a real engine hands over what it has made (piper a
sentence, espeak-ng two seconds), so a benchmark measures voxrelay, not this
engine cutting frames."""
_PERIOD_SAMPLES = 40  # 400 Hz at 16 kHz
_LATENCY = re.compile(r"\[\[latency_ms=(\d+)\]\]")
_FAIL = "[[fail]]"
_HOLD = re.compile(r"\[\[hold_ms=(\d+)\]\]")
_DIRECTIVE = re.compile(r"\[\[latency_ms=\d+\]\]|\[\[fail\]\]|\[\[hold_ms=\d+\]\]")


@dataclass
class ToneStats:
    """What the engine is doing now; tests use it to prove synthesis stopped."""

    started: int = 0
    finished: int = 0
    cancelled: int = 0
    active: int = 0
    peak_active: int = 0
    """Most segments synthesized at the same time."""


class ToneEngine(SpeechEngine):
    """Square-wave 'speech' with controllable latency, length and failures."""

    name = ENGINE_NAME
    word_timing = True

    def __init__(
        self,
        *,
        first_audio_ms: float = 0.0,
        ms_per_char: float = 10.0,
        realtime_factor: float = 0.0,
        concurrency: int = 64,
    ) -> None:
        self.max_concurrency = concurrency
        self.max_chunk_bytes = SAMPLE_RATE_HZ * 2  # a second, when not paced
        self.first_audio_ms = first_audio_ms
        self.ms_per_char = ms_per_char
        self.realtime_factor = realtime_factor
        self.stats = ToneStats()
        self.idle = asyncio.Event()
        self.idle.set()
        self._voice = VoiceInfo(VOICE_NAME, ENGINE_NAME, ("und",), SAMPLE_RATE_HZ)

    def voices(self) -> Sequence[VoiceInfo]:
        return [self._voice]

    @staticmethod
    def amplitude_for(text: str) -> int:
        """The square wave's amplitude for a segment's text: 1000 to 30999."""
        return 1000 + zlib.crc32(text.encode("utf-8")) % 30000

    def samples_for(self, text: str, speed: float = 1.0) -> int:
        """How many samples a segment's text yields."""
        spoken = _HOLD.sub("", _LATENCY.sub("", text)).replace(_FAIL, "")
        return round(len(spoken) * self.ms_per_char / speed * SAMPLE_RATE_HZ / 1000)

    def word_timings(self, text: str, speed: float = 1.0) -> list[WordTiming]:
        """Where each word of `text` is in its audio (at `SAMPLE_RATE_HZ`): a word's
        characters take their share of the samples; directives take none."""
        directives = [m.span() for m in _DIRECTIVE.finditer(text)]
        spoken_before = [0] * (len(text) + 1)
        """Spoken characters before each index."""
        inside = bytearray(len(text))
        for start, end in directives:
            inside[start:end] = b"\x01" * (end - start)
        for index in range(len(text)):
            spoken_before[index + 1] = spoken_before[index] + (not inside[index])
        spoken = spoken_before[-1]
        total = self.samples_for(text, speed)

        def at(index: int) -> int:
            return round(spoken_before[index] * total / spoken) if spoken else 0

        return [
            WordTiming(start, end - start, at(start), at(end))
            for start, end in spoken_words(text)
            if not any(d_start <= start < d_end for d_start, d_end in directives)
        ]

    async def synthesize_words(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[SynthesisItem]:
        words = collections.deque(self.word_timings(text, options.speed))
        position = 0
        chunks = self.synthesize(voice, text, options)
        try:
            async for chunk in chunks:
                position += len(chunk) // 2
                starting = []
                while words and words[0].start_sample < position:
                    starting.append(words.popleft())
                if starting:
                    yield tuple(starting)
                yield chunk
        finally:  # a consumer that stops early stops the synthesis now
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()
        if words:  # words of no audio (the text had no spoken character)
            yield tuple(words)

    async def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        self.stats.started += 1
        self.stats.active += 1
        self.stats.peak_active = max(self.stats.peak_active, self.stats.active)
        self.idle.clear()
        try:
            latency = _LATENCY.search(text)
            await asyncio.sleep((int(latency.group(1)) if latency else self.first_audio_ms) / 1000)
            if hold := _HOLD.search(text):
                # Blocking on purpose: the loop's thread is held (see the module's docstring).
                time.sleep(int(hold.group(1)) / 1000)  # noqa: ASYNC251
            total = self.samples_for(text, options.speed)
            fail_at = total // 2 if _FAIL in text else None
            wave = _square_wave(total, self.amplitude_for(text))
            frame = SAMPLE_RATE_HZ * FRAME_MS // 1000 if self.realtime_factor else SAMPLE_RATE_HZ
            for start in range(0, total, frame):
                chunk = wave[start : start + frame]
                # Paced, or (instant) a yield to the loop: either keeps cancellation prompt.
                await asyncio.sleep(self.realtime_factor * len(chunk) / SAMPLE_RATE_HZ)
                if fail_at is not None and start + len(chunk) > fail_at:
                    if fail_at > start:
                        yield chunk[: fail_at - start].tobytes()
                    raise EngineError(ErrorCode.INTERNAL, "tone engine: [[fail]] requested")
                yield chunk.tobytes()
            self.stats.finished += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.stats.cancelled += 1
            raise
        finally:
            self.stats.active -= 1
            if not self.stats.active:
                self.idle.set()


def _square_wave(count: int, amplitude: int) -> np.ndarray:
    half = _PERIOD_SAMPLES // 2
    period = np.array([amplitude] * half + [-amplitude] * half, dtype="<i2")
    return np.tile(period, -(-count // _PERIOD_SAMPLES))[:count]
