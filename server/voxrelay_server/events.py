"""What a session emits, in order: the dispatcher's output, free of any transport."""

from __future__ import annotations

from dataclasses import dataclass

from voxrelay_server.errors import SpeechError


@dataclass(frozen=True)
class TurnStarted:
    """Turn `turn` (numbered from 1) started; its audio follows."""

    turn: int


@dataclass(slots=True)
class AudioOut:
    """Encoded audio of one segment, in delivery order.

    Not frozen: one is built per audio message, and a frozen dataclass costs
    about three times as much to construct. Nothing changes one once built.
    """

    turn: int
    segment: int
    data: bytes
    offset_samples: int
    """Index of the first sample of `data`, counted from the start of the turn."""
    text_offset: int = 0
    """Where the segment's text starts in the turn's text as sent, in characters."""
    text_length: int = 0
    """How many characters the segment's text has: `turn_text[text_offset:][:text_length]`."""


@dataclass(frozen=True, slots=True)
class WordOut:
    """One word of a turn's text and where it is spoken in the turn's audio."""

    text: str
    """The word as the caller sent it."""
    text_offset: int
    """Its first character in the turn's text as sent, in code points."""
    start_samples: int
    """Its first sample, counted from the turn's start at the output rate."""
    end_samples: int
    """The sample after its last, counted the same way."""


@dataclass(frozen=True)
class WordsOut:
    """Word timing of segment `segment` of turn `turn`, sent before the audio holding
    the first sample of each of its words (only with `word_timestamps`)."""

    turn: int
    segment: int
    words: tuple[WordOut, ...]


@dataclass(frozen=True)
class TurnEnded:
    """Turn `turn` ended; `cancelled` when a barge-in dropped some of it."""

    turn: int
    cancelled: bool = False
    spoken_text: str = ""
    """What the listener heard: a prefix of the turn's text as sent (see
    `SessionDispatcher.cancel`), all of it for a turn no cancel cut short; at most
    `MAX_SPOKEN_TEXT_CHARS` characters of it."""
    spoken_beyond: int = 0
    """Characters the listener heard after `spoken_text`, which holds only the first
    `MAX_SPOKEN_TEXT_CHARS`: the caller cuts its own copy of the turn's text there."""

    @property
    def spoken_length(self) -> int:
        """How many characters of the turn's text as sent the listener heard."""
        return len(self.spoken_text) + self.spoken_beyond


@dataclass(frozen=True)
class SessionFailed:
    """The session failed with `error`; `SessionEnded` follows, then nothing.

    `turn` is the turn in progress on the wire (started, not ended), whose
    `TurnEnded` this takes the place of, or 0; `segment` is the segment whose
    engine failed, or 0.
    """

    error: SpeechError
    turn: int = 0
    segment: int = 0


@dataclass(frozen=True)
class SessionEnded:
    """Every accepted turn is done (or the session failed); nothing follows."""


SessionEvent = TurnStarted | AudioOut | WordsOut | TurnEnded | SessionFailed | SessionEnded
