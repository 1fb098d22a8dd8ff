"""Validated per-session settings and the limits that bound them."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from voxrelay_server.errors import InvalidInput, TextTooLong

MAX_TEXT_CHUNK_CHARS = 16384
"""Longest text chunk accepted in one request."""
MAX_WHOLE_TEXT_CHARS = 1_000_000
"""Longest text one `Synthesize` call accepts: many hours of speech, and even at
4 bytes per character still under gRPC's default 4 MiB message limit."""
MAX_SPOKEN_TEXT_CHARS = 100_000
"""Most of a turn's text `TURN_ENDED.spoken_text` carries (and a session keeps for it,
per turn): at most 400 KB of UTF-8, a tenth of gRPC's default 4 MiB message limit, for
any turn, however long (a `Stream` turn has no limit). `spoken_length` says how much
was heard in all."""
MAX_SEGMENT_ENDS = 1024
"""Where its segments end, kept by a turn for `spoken_text` (the older ones thinned out
beyond this many): a `Stream` turn has no limit on its segments."""
DEFAULT_MAX_SEGMENT_CHARS = 400
"""Longest segment an engine is given by default: about 25 s of speech. Piper's memory
grows with a segment's length (about 1 MB a character), so a bound on it is a bound
on what one request can cost; `voxrelay serve --max-segment-chars` changes it."""
MAX_INSTRUCTIONS_CHARS = 4096
DEFAULT_MIN_SENTENCE_CHARS = 20
MAX_MIN_SENTENCE_CHARS = 10000
MAX_CHUNK_MS = 10000
MAX_INFLIGHT_SEGMENTS = 64
MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 96000
MIN_SPEED = 0.25
MAX_SPEED = 4.0
DEFAULT_FIRST_CLAUSE_MIN_WORDS = 4
"""Words the first segment of a turn holds before it may end at a clause: "Sure thing,
I can" is the shortest first segment; "Sure," waits for more."""
MAX_FIRST_CLAUSE_MIN_WORDS = 50
DEFAULT_STALL_MS = 500
"""How long the start of a turn may stall before its complete words are spoken: an LLM
streams tokens every 12 to 50 ms (20 to 80 a second), so a pause ten times as long is a
real stall (a tool call, a slow model), not the gap between two tokens."""
MAX_STALL_MS = 10000


class Segmentation(enum.Enum):
    """How a turn's text is cut into segments."""

    FIRST_CLAUSE = "first_clause"
    """The first segment of a turn ends at its first clause with enough words (or when
    the text stalls, at its last complete word); later ones at sentence ends."""
    SENTENCES = "sentences"
    """Every segment ends at a sentence end."""


class Pace(enum.Enum):
    """How a session's audio is sent."""

    AS_MADE = "as_made"
    """As fast as it is made and the client reads it."""
    REALTIME = "realtime"
    """At real-time pace, a bounded lead (`playback.PACE_LEAD_S`) ahead of a listener."""


class AudioEncoding(enum.Enum):
    """Encoding of the samples sent to the caller (always mono)."""

    PCM_S16LE = "pcm_s16le"
    """16-bit signed little-endian integers."""
    PCM_F32LE = "pcm_f32le"
    """32-bit little-endian floats in [-1, 1]: the 16-bit value divided by 32767."""
    MULAW = "mulaw"
    """G.711 mu-law: one byte per sample."""
    ALAW = "alaw"
    """G.711 A-law: one byte per sample."""
    OGG_OPUS = "ogg_opus"
    """Opus in Ogg: one logical stream per turn, sent as whole pages."""

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of one sample on the wire; 0 for OGG_OPUS, whose messages are Ogg pages."""
        return _BYTES_PER_SAMPLE[self]


_BYTES_PER_SAMPLE = {
    AudioEncoding.PCM_S16LE: 2,
    AudioEncoding.PCM_F32LE: 4,
    AudioEncoding.MULAW: 1,
    AudioEncoding.ALAW: 1,
    AudioEncoding.OGG_OPUS: 0,
}
OPUS_RATES_HZ = (8000, 12000, 16000, 24000, 48000)
"""The only rates Opus encodes at."""


def opus_rate_for(native_rate_hz: int) -> int:
    """The lowest Opus rate at or above `native_rate_hz` (48000 above that): no detail
    of the voice is lost, and no more bytes are spent than it needs."""
    return next((rate for rate in OPUS_RATES_HZ if rate >= native_rate_hz), OPUS_RATES_HZ[-1])


@dataclass(frozen=True)
class SessionRequest:
    """A session's configuration as the caller sent it; zero values mean "default"."""

    voice: str = ""
    language_code: str = ""
    """A BCP-47 tag: with `voice` empty, the server picks its preferred voice for it."""
    encoding: AudioEncoding = AudioEncoding.PCM_S16LE
    sample_rate_hz: int = 0
    speed: float = 0.0
    instructions: str = ""
    min_sentence_chars: int = 0
    chunk_ms: int = 0
    max_inflight_segments: int = 0
    segmentation: Segmentation = Segmentation.FIRST_CLAUSE
    first_clause_min_words: int = 0
    stall_ms: int = 0
    word_timestamps: bool = False
    pace: Pace = Pace.AS_MADE


@dataclass(frozen=True)
class OutputFormat:
    """What the caller receives: encoding, rate and target message duration."""

    encoding: AudioEncoding
    sample_rate_hz: int
    chunk_ms: int = 0
    """Target duration of one audio message; 0 sends audio as the engine produces it."""


@dataclass(frozen=True)
class SessionSettings:
    """A session's configuration after validation, with every default filled in."""

    voice: str
    output: OutputFormat
    speed: float
    instructions: str
    min_sentence_chars: int
    max_inflight_segments: int
    first_clause_words: int = 0
    """The first segment of a turn may end at a clause once it has this many words;
    0 with `Segmentation.SENTENCES`."""
    stall_s: float = 0.0
    """The start of a turn stalled this long speaks its complete words; 0 = never."""
    word_timestamps: bool = False
    """Send word timing, where the voice gives it."""
    pace: Pace = Pace.AS_MADE


def validate_request(
    request: SessionRequest,
    *,
    voice: str,
    native_sample_rate_hz: int,
    default_max_inflight_segments: int,
) -> SessionSettings:
    """Check `request` against the documented ranges and fill in defaults.

    `voice` is the already resolved voice name and `native_sample_rate_hz` its rate.
    Raises `InvalidInput` naming the field, the value and what is allowed.
    """
    speed = request.speed
    if speed == 0.0:
        speed = 1.0
    elif not math.isfinite(speed) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidInput(
            f"speed {speed!r} is out of range: use a value from {MIN_SPEED} to {MAX_SPEED}, "
            "or 0 for the voice's normal speed"
        )
    rate = request.sample_rate_hz or native_sample_rate_hz
    if request.encoding is AudioEncoding.OGG_OPUS:
        rate = request.sample_rate_hz or opus_rate_for(native_sample_rate_hz)
        if rate not in OPUS_RATES_HZ:
            allowed = ", ".join(str(r) for r in OPUS_RATES_HZ[:-1])
            raise InvalidInput(
                f"audio_format.sample_rate_hz {rate} is not an Opus rate: with "
                f"AUDIO_ENCODING_OGG_OPUS use {allowed} or {OPUS_RATES_HZ[-1]} Hz, or 0 for "
                f"{opus_rate_for(native_sample_rate_hz)} Hz (the voice's native rate is "
                f"{native_sample_rate_hz} Hz)"
            )
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        raise InvalidInput(
            f"audio_format.sample_rate_hz {rate} is out of range: use {MIN_SAMPLE_RATE_HZ} "
            f"to {MAX_SAMPLE_RATE_HZ} Hz, or 0 for the voice's native rate "
            f"({native_sample_rate_hz} Hz)"
        )
    _check_at_most("instructions length", len(request.instructions), MAX_INSTRUCTIONS_CHARS)
    _check_at_most("min_sentence_chars", request.min_sentence_chars, MAX_MIN_SENTENCE_CHARS)
    _check_at_most("chunk_ms", request.chunk_ms, MAX_CHUNK_MS)
    _check_at_most("max_inflight_segments", request.max_inflight_segments, MAX_INFLIGHT_SEGMENTS)
    _check_at_most(
        "first_clause_min_words", request.first_clause_min_words, MAX_FIRST_CLAUSE_MIN_WORDS
    )
    _check_at_most("stall_ms", request.stall_ms, MAX_STALL_MS)
    first_clause = request.segmentation is Segmentation.FIRST_CLAUSE
    return SessionSettings(
        voice=voice,
        output=OutputFormat(request.encoding, rate, request.chunk_ms),
        speed=speed,
        instructions=request.instructions,
        min_sentence_chars=request.min_sentence_chars or DEFAULT_MIN_SENTENCE_CHARS,
        max_inflight_segments=request.max_inflight_segments or default_max_inflight_segments,
        first_clause_words=(
            (request.first_clause_min_words or DEFAULT_FIRST_CLAUSE_MIN_WORDS)
            if first_clause
            else 0
        ),
        stall_s=(request.stall_ms or DEFAULT_STALL_MS) / 1000 if first_clause else 0.0,
        word_timestamps=request.word_timestamps,
        pace=request.pace,
    )


def whole_text_chunks(text: str, chunk_chars: int = MAX_TEXT_CHUNK_CHARS) -> list[str]:
    """Cut a whole text (one `Synthesize` call) into chunks of at most `chunk_chars`.

    Raises `InvalidInput` for an empty text or one over `MAX_WHOLE_TEXT_CHARS`.
    Cutting anywhere is safe: a session joins its chunks exactly as sent.
    """
    chunk_chars = max(1, min(chunk_chars, MAX_TEXT_CHUNK_CHARS))
    check_whole_text(text)
    return [text[start : start + chunk_chars] for start in range(0, len(text), chunk_chars)]


def check_whole_text(text: str) -> None:
    """Raise `InvalidInput` for a `Synthesize` text that is empty or too long."""
    if not text:
        raise InvalidInput("text must not be empty: send at least one character")
    if len(text) > MAX_WHOLE_TEXT_CHARS:
        raise TextTooLong(
            f"text of {len(text)} characters is over the limit of {MAX_WHOLE_TEXT_CHARS}: "
            "split it across several calls, or stream it with the Stream rpc"
        )


def _check_at_most(name: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise InvalidInput(f"{name} {value} is out of range: use 0 to {limit}")
