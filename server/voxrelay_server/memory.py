"""How much memory a server may take, as a function of its settings, and the allocator
settings that give memory back once a burst is over.

The bound is the growth above the server's idle level (engines loaded, no session);
each term is a bound the server enforces, times a measured constant:

- each piper run whose memory can be held at once (`PiperEngine.runs_held`: one a
  worker, and one for the copy of each voice that uses every core): at most
  `MAX_PHONEMES_PER_RUN` phonemes (`PIPER_RUN_BYTES`, measured on the costliest texts
  and speeds found). Whatever the number of voices (`--piper-voices`): each voice has
  memory arenas of its own, so with more than one each run gives its memory back as
  it ends, and the runs held are those going on; the voices themselves (about
  150 MiB each, measured) are part of the idle level;
- each session: its undelivered audio. Segments stop taking their engine's audio
  once it fills `--session-audio-buffer-bytes` (the head segment once its own does),
  so it is at most twice the buffer plus a chunk for each segment being made (at most
  the engine's slots, and the head); see `SessionDispatcher._behind`;
- each session, for an engine that makes audio ahead of its consumer (espeak-ng's
  workers): what it keeps for the session's paused segments, which count against the
  buffer at that size, so at most the buffer plus one for each slot and the head;
- each session: its text, a `Synthesize` request of up to 1,000,000 characters, or
  `--max-buffered-text-chars`, and its call's buffers and bookkeeping;
- each session: the text its turns keep for `TURN_ENDED.spoken_text` until they end
  (`SessionDispatcher`): the turn on the wire keeps at most `MAX_SPOKEN_TEXT_CHARS`;
  every later turn's text is waiting to be spoken (within the text budget, the
  whitespace between its segments included) or in a segment synthesized ahead (at
  most `MAX_INFLIGHT_SEGMENTS` of `--max-segment-chars`); a cancelled turn keeps only
  what it heard; and the turn on the wire keeps where its last `MAX_SEGMENT_ENDS`
  segments end;

whatever the text: a segment's audio is not bounded by its text, which may make
hours of speech. espeak-ng runs in worker processes of its own, a few megabytes each,
outside this bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.settings import (
    DEFAULT_MAX_SEGMENT_CHARS,
    MAX_INFLIGHT_SEGMENTS,
    MAX_SEGMENT_ENDS,
    MAX_SPOKEN_TEXT_CHARS,
    MAX_WHOLE_TEXT_CHARS,
)

MIB = 1 << 20
PIPER_RUN_BYTES = 600 * MIB
"""Peak memory of one piper run above the loaded voice (at most 300 x speed phonemes,
about 15 s of speech): 157 to 421 MiB measured on numbers, braille, English and
punctuation at speeds 0.25, 1 and 4, and up to 521 MiB on pause marks at speed 0.25."""
BYTES_PER_TEXT_CHAR = 8
"""A character held as a Python string (up to 4 bytes) and in its request (up to 4)."""
BYTES_PER_HTTP_TEXT_CHAR = 16
"""With the HTTP listener: a character held as a Python string (up to 4 bytes) and in
the JSON body its request keeps (up to 12, escaped as a surrogate pair)."""
BYTES_PER_KEPT_CHAR = 4
"""A character of a turn's text kept for `spoken_text`: a Python string's widest."""
BYTES_PER_SEGMENT_END = 128
"""Where a segment ends, kept for `spoken_text`: a tuple of two ints and its list slot."""
SESSION_OVERHEAD_BYTES = 1 * MIB
"""The rest of a session: its call's buffers and one outgoing message (at most a
second of audio, 384 KiB at 96 kHz in 32-bit floats), its tasks and bookkeeping."""
IDLE_TRIM_DELAY_S = 2.0
"""How long after the last session ended the heap is trimmed."""
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclass(frozen=True)
class EngineMemory:
    """What an engine's sessions can hold, from its `SpeechEngine` attributes."""

    slots: int
    """Segments it synthesizes at once, server-wide (`max_concurrency`)."""
    max_chunk_bytes: int
    paused_segment_bytes: int

    @classmethod
    def of(cls, engine: SpeechEngine) -> EngineMemory:
        return cls(engine.max_concurrency, engine.max_chunk_bytes, engine.paused_segment_bytes)

    def session_audio(self, buffer_bytes: int) -> int:
        """A session's undelivered audio: twice its buffer, and a chunk for each
        segment being made (one a slot, and the head)."""
        return 2 * buffer_bytes + (self.slots + 1) * self.max_chunk_bytes

    def session_lookahead(self, buffer_bytes: int) -> int:
        """What the engine keeps for a session's paused segments."""
        if not self.paused_segment_bytes:
            return 0
        return buffer_bytes + (self.slots + 1) * self.paused_segment_bytes


@dataclass(frozen=True)
class MemoryBound:
    """The most a server's memory can grow above its idle level, term by term (bytes)."""

    piper_runs: int
    session_audio: int
    engine_lookahead: int
    session_text: int
    turn_text: int
    session_overhead: int

    @property
    def total(self) -> int:
        return (
            self.piper_runs
            + self.session_audio
            + self.engine_lookahead
            + self.session_text
            + self.turn_text
            + self.session_overhead
        )

    def describe(self) -> str:
        """One line for the log: the total and its terms in MiB."""
        terms = ", ".join(
            f"{name.replace('_', ' ')} {value / MIB:.0f}" for name, value in vars(self).items()
        )
        return f"{self.total / MIB:.0f} MiB above idle ({terms})"


def memory_bound(
    *,
    max_sessions: int,
    piper_runs: int,
    engines: Sequence[EngineMemory],
    session_audio_buffer_bytes: int,
    max_buffered_text_chars: int,
    max_segment_chars: int = DEFAULT_MAX_SEGMENT_CHARS,
    http: bool = False,
) -> MemoryBound:
    """The bound for these settings, every session on the costliest engine (`http`: the
    HTTP listener is on, whose requests keep their JSON body)."""
    buffer = session_audio_buffer_bytes
    costliest = max(
        engines,
        key=lambda engine: engine.session_audio(buffer) + engine.session_lookahead(buffer),
        default=EngineMemory(slots=0, max_chunk_bytes=0, paused_segment_bytes=0),
    )
    text_chars = max(MAX_WHOLE_TEXT_CHARS, max_buffered_text_chars)
    return MemoryBound(
        piper_runs=piper_runs * PIPER_RUN_BYTES,
        session_audio=max_sessions * costliest.session_audio(buffer),
        engine_lookahead=max_sessions * costliest.session_lookahead(buffer),
        session_text=max_sessions
        * text_chars
        * (BYTES_PER_HTTP_TEXT_CHAR if http else BYTES_PER_TEXT_CHAR),
        turn_text=max_sessions
        * (
            kept_turn_text_chars(max_buffered_text_chars, max_segment_chars) * BYTES_PER_KEPT_CHAR
            + MAX_SEGMENT_ENDS * BYTES_PER_SEGMENT_END
        ),
        session_overhead=max_sessions * SESSION_OVERHEAD_BYTES,
    )


def kept_turn_text_chars(max_buffered_text_chars: int, max_segment_chars: int) -> int:
    """Most characters a session's turns keep for `spoken_text` at once: the turn on the
    wire's `MAX_SPOKEN_TEXT_CHARS`, the text waiting to be spoken, and the segments
    synthesized ahead of delivery."""
    return (
        MAX_SPOKEN_TEXT_CHARS + max_buffered_text_chars + MAX_INFLIGHT_SEGMENTS * max_segment_chars
    )


def tune_allocator() -> bool:
    """Have glibc return large freed blocks to the system at once (False elsewhere).

    By default glibc raises its threshold for serving a block from its own mapping up
    to the largest block freed so far, so after one long segment every later buffer of
    that size stays in the heap and the process keeps the memory of its worst moment.
    A fixed threshold (128 KiB, glibc's default start) keeps the heap small.
    """
    libc = _libc()
    with contextlib.suppress(AttributeError):
        return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
    return False


def trim_heap() -> bool:
    """Return the free memory inside glibc's heaps to the system (False elsewhere).

    Blocks under the mmap threshold (espeak's audio chunks, requests, messages) are
    freed into the heap, and a burst leaves it large and full of holes that glibc
    keeps; `malloc_trim` gives their pages back. It takes a few milliseconds.
    """
    libc = _libc()
    with contextlib.suppress(AttributeError):
        return libc is not None and bool(libc.malloc_trim(0))
    return False


def trim_when_idle() -> None:
    """Trim the heap `IDLE_TRIM_DELAY_S` after the server's last session ended (call it
    on the server's loop then): the engine work of ended sessions is over by then."""
    loop = asyncio.get_running_loop()
    loop.call_later(IDLE_TRIM_DELAY_S, loop.run_in_executor, None, trim_heap)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None
