"""The engine interface every voice implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class VoiceInfo:
    """A voice an engine offers."""

    name: str
    """Full name, `<engine>/<voice>`, as callers write it."""
    engine: str
    language_codes: tuple[str, ...]
    """BCP-47 tags, for example `en-US`."""
    native_sample_rate_hz: int

    @property
    def voice_id(self) -> str:
        """The part after `<engine>/`: what the engine itself calls the voice."""
        return self.name.partition("/")[2]


@dataclass(frozen=True, slots=True)
class WordTiming:
    """Where one word of a segment's text is spoken in the segment's audio."""

    text_offset: int
    """Its first character in the segment's text, in code points."""
    text_length: int
    """Its length in code points (the word without punctuation at its ends)."""
    start_sample: int
    """Its first sample in the segment's audio, at the voice's native rate."""
    end_sample: int
    """The sample after its last, at or after `start_sample`: a pause after the word
    (a clause's end) is not part of it where the engine says where it ends."""


SynthesisItem = bytes | tuple[WordTiming, ...]
"""What `synthesize_words` yields: audio, or the timing of the words starting in the
audio chunk that comes next."""


@dataclass(frozen=True)
class SynthesisOptions:
    """How to speak one segment."""

    speed: float = 1.0
    """Speaking rate; 1.0 is the voice's normal speed, range [0.25, 4.0]."""
    instructions: str = ""
    """Free-form speaking instructions, for engines that take them."""


class SpeechEngine(abc.ABC):
    """Synthesizes text into 16-bit mono PCM, streamed as it is produced."""

    name: str
    """The engine's name, the prefix of its voices' names."""
    max_concurrency: int = 8
    """Segments it can usefully synthesize at once, server-wide (its cores, its connections)."""
    max_chunk_bytes: int = 64 * 1024
    """Largest chunk `synthesize` yields."""
    paused_segment_bytes: int = 0
    """Most audio it keeps for a segment whose consumer stops taking it (its look-ahead);
    0 for an engine that makes audio only when asked for more."""
    faster_alone: bool = False
    """A segment synthesized while no other is makes its audio faster (it gets every
    core): a session's next segment then starts once the one before has made audio."""
    word_timing: bool = False
    """`synthesize_words` says where each word of the text is spoken (its own alignment)."""

    @abc.abstractmethod
    def voices(self) -> Sequence[VoiceInfo]:
        """Every voice this engine offers."""

    @abc.abstractmethod
    def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        """Yield little-endian int16 PCM at `voice.native_sample_rate_hz`.

        Chunks may have any length, odd ones included. Raises `EngineError` on
        failure. Closing the iterator early stops the synthesis promptly. While the
        consumer takes no chunk, the engine holds at most `paused_segment_bytes` of
        audio for it and no resource other segments need.
        """

    async def synthesize_words(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[SynthesisItem]:
        """`synthesize`, with each word's timing (`words.spoken_words` of `text`, each
        once, in order) yielded before the audio chunk holding the word's first sample.

        Engines without `word_timing` yield audio only (this default).
        """
        chunks = self.synthesize(voice, text, options)
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # a consumer that stops early stops the engine now
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    async def aclose(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release what the engine holds (threads, connections)."""
