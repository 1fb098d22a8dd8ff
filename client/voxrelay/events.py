"""What a session yields: audio as numpy arrays and lifecycle events."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

WireEncoding = Literal["pcm", "mulaw", "alaw", "opus"]
"""How audio travels: "pcm" (16-bit or float, the session's `dtype`), "mulaw" or
"alaw" (G.711, one byte a sample), "opus" (Ogg Opus, one stream per turn)."""


@dataclass(frozen=True)
class Audio:
    """A piece of a turn's audio, in order.

    `data` is what the server sent: PCM, G.711 codes (one byte a sample) or, for
    "opus", whole Ogg pages; the `data` of one turn's events joined is a complete
    `.opus` file. `samples` is `data` decoded into the session's dtype for PCM and
    G.711; for "opus" it is empty (an Opus decoder needs the turn's stream as a
    whole: `SynthesizedAudio.samples` is decoded, or join `data` and decode it),
    and `sample_count` says how many decoded samples the pages complete.
    """

    samples: npt.NDArray[np.int16] | npt.NDArray[np.float32]
    """Mono samples, shape (n,), in the session's dtype; empty for "opus"."""
    sample_rate_hz: int
    turn: int
    segment: int
    offset_samples: int
    """Position of the first sample within the turn (for "opus": of the first
    sample the chunk's pages complete, the stream's pre-skip removed)."""
    data: bytes = b""
    """The encoded bytes as sent by the server."""
    encoding: WireEncoding = "pcm"
    sample_count: int = -1
    """Samples this piece holds once decoded; -1 means `len(samples)`."""
    text_offset: int = 0
    """Where the text of the piece's segment starts in the turn's text as sent (the
    turn's `send_text` chunks joined), in characters (code points)."""
    text_length: int = 0
    """How many characters the segment's text has: `turn_text[text_offset:
    text_offset + text_length]` is what the segment speaks (surrounding whitespace
    left out). The same for every piece of a segment."""
    repeated_samples: int = 0
    """After the session resumed on another replica (see `Resumed`): how many samples
    at the start of this piece were already given before the cut, as the segment's
    audio comes again from its start. A player skips them (or crossfades over them);
    0 for everything else."""

    @property
    def text_end(self) -> int:
        """Where the segment's text ends in the turn's text: `text_offset + text_length`."""
        return self.text_offset + self.text_length

    def unrepeated(self) -> Audio:
        """This piece without the `repeated_samples` at its start, for a player that
        skips what a resume repeats. PCM and G.711 are cut; "opus" pages cannot be,
        and come back as they are (the resumed audio is a new Ogg stream)."""
        skip = self.repeated_samples
        if not skip or self.encoding == "opus" or not len(self.samples):
            return self
        width = len(self.data) // len(self.samples)
        return replace(
            self,
            samples=self.samples[skip:],
            data=self.data[skip * width :],
            offset_samples=self.offset_samples + skip,
            repeated_samples=0,
        )

    @property
    def num_samples(self) -> int:
        """Samples this piece holds once decoded (for "opus", from its pages' granules)."""
        return len(self.samples) if self.sample_count < 0 else self.sample_count

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate_hz


@dataclass(frozen=True)
class SessionStarted:
    """The first event of every session: its id and what the server will send."""

    session_id: str
    """Names the session in the server's logs and error messages: quote it when
    reporting a problem."""
    voice: str
    """The voice that speaks, `<engine>/<voice>` (the server's default when none was
    asked for)."""
    encoding: WireEncoding
    sample_rate_hz: int
    """The rate of every `Audio` of the session, in hertz."""
    pace_lead_ms: int = 0
    """With `pace="realtime"`: how far ahead of a real-time listener the server may be
    when it sends audio; 0 when audio comes as fast as it is made."""
    text_budget_chars: int = 0
    """The most characters of text the session may have waiting to be spoken (sent
    and not yet synthesized); more is refused with RESOURCE_EXHAUSTED. A caller
    streaming a long text keeps what it sent beyond the `Audio.text_end` it has
    received below this. 0: a server that does not say."""


@dataclass(frozen=True)
class Word:
    """One word of a turn's text and where it is spoken in the turn's audio."""

    text: str
    """The word as sent (punctuation at its ends left out)."""
    text_offset: int
    """Its first character in the turn's text as sent, in code points:
    `turn_text[text_offset:text_offset + len(text)] == text`."""
    start_samples: int
    """Its first sample, from the turn's start at the session's output rate (as
    `Audio.offset_samples` counts)."""
    end_samples: int
    """The sample after its last one (a pause after it is not part of it)."""

    @property
    def text_end(self) -> int:
        """Where the word ends in the turn's text: `text_offset + len(text)`."""
        return self.text_offset + len(self.text)


@dataclass(frozen=True)
class Words:
    """Word timing (with `SessionOptions(word_timestamps=True)` and a voice that gives
    it): words of segment `segment` of turn `turn`, each once and in order; it comes
    before the `Audio` holding the first sample of each of them."""

    turn: int
    segment: int
    words: tuple[Word, ...]


@dataclass(frozen=True)
class TurnStarted:
    turn: int


@dataclass(frozen=True)
class TurnEnded:
    turn: int
    cancelled: bool = False
    """True when a `cancel()` dropped some or all of the turn's audio."""
    spoken_text: str = ""
    """What the listener heard: a prefix of the turn's text as sent. All of it for a
    turn no `cancel()` cut short or named; for a turn named by `cancel(turn=...,
    played_samples=...)`, the text up to the end of the last segment (with word
    timing: the last word) whose audio ended at or before that sample; for another
    cancelled turn, up to the end of the last segment whose audio was all sent before
    the cancel; "" when none was. At
    most the first 100000 characters: `spoken_length` says how much was heard, and
    `heard(turn_text)` cuts the whole text there."""
    spoken_length: int = -1
    """How many characters of the turn's text as sent the listener heard; -1 (a
    server that does not say) means `len(spoken_text)`."""

    @property
    def heard_chars(self) -> int:
        """How many characters of the turn's text the listener heard."""
        return len(self.spoken_text) if self.spoken_length < 0 else self.spoken_length

    def heard(self, turn_text: str) -> str:
        """What the listener heard of `turn_text` (the turn's text chunks as sent,
        joined): `spoken_text`, or for a turn longer than it carries, the text cut at
        `spoken_length`."""
        return turn_text[: self.heard_chars]


@dataclass(frozen=True)
class Resumed:
    """The session's replica was lost and the session goes on on another one.

    The client reopened the session with the same options, sent again the text from
    the first segment whose audio it had not received whole, then the rest; turn
    numbers, samples and text offsets go on as before. The audio of segment `segment`
    of turn `turn` comes again from its start (`offset_samples`); its first
    `repeated_samples` were already given (the `Audio` pieces carrying them say so in
    their own `repeated_samples`): skip them, or crossfade. `turn` 0: no turn's audio
    was under way, nothing is repeated.
    """

    turn: int
    segment: int
    offset_samples: int
    """Where the segment that comes again starts in its turn, in samples."""
    repeated_samples: int
    """Samples of that segment given before the cut: the resumed audio repeats them."""
    text_offset: int
    """Where that segment's text starts in the turn's text."""
    session_id: str
    """The new session's id (in the new replica's logs)."""
    reason: str
    """Why the previous call ended: its status and message."""

    @property
    def skip_to(self) -> int:
        """The turn's first sample not given before the cut."""
        return self.offset_samples + self.repeated_samples


@dataclass(frozen=True)
class SessionEnded:
    """The server finished every turn; the stream ends after this."""


Event = SessionStarted | Audio | Words | TurnStarted | TurnEnded | Resumed | SessionEnded
