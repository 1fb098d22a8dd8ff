"""How much memory a server may take, as a function of its settings, and the allocator
settings that give memory back once a burst is over.

The bound is the growth above the server's idle level (engines loaded, no session);
each term is a bound the server enforces, times a measured constant:

- each piper worker: one run of the model, at most `MAX_PHONEMES_PER_RUN` phonemes
  (`PIPER_RUN_BYTES`, measured on the costliest texts and speeds found);
- each session: its undelivered audio up to `--session-audio-buffer-bytes`, plus the
  segment being delivered, which finishes even past that ceiling, plus its text: a
  `Synthesize` request of up to 1,000,000 characters, or `--max-buffered-text-chars`;
- each synthesis slot: the segment it is making, which may finish past its session's
  ceiling (the merger waits for it);

where a segment's audio is at most `--max-segment-chars` characters times
`MAX_AUDIO_S_PER_CHAR` at the slowest speed, at the voice's rate. espeak-ng runs in
worker processes of its own, a few megabytes each, outside this bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

from voxrelay_server.settings import MAX_WHOLE_TEXT_CHARS

MIB = 1 << 20
PIPER_RUN_BYTES = 600 * MIB
"""Peak memory of one piper run above the loaded voice (at most 300 x speed phonemes,
about 15 s of speech): 157 to 421 MiB measured on numbers, braille, English and
punctuation at speeds 0.25, 1 and 4, and up to 521 MiB on pause marks at speed 0.25."""
MAX_AUDIO_S_PER_CHAR = 9.0
"""Most speech one character of text was seen to make, at the slowest speed (0.25):
a braille pattern, which espeak-ng's phonemizer reads by name ("braille one two three
...", 45 phonemes), 8.5 s with piper; Myanmar letters 7.3 s, numbers 2.3 s, emoji 2.6 s.
English text makes about 0.06 s a character at normal speed."""
NATIVE_RATE_HZ = 24000
"""The highest native rate of the engines (piper and espeak-ng 22050 Hz, openai 24000)."""
BYTES_PER_TEXT_CHAR = 8
"""A character held as a Python string (up to 4 bytes) and in its request (up to 4)."""
SESSION_OVERHEAD_BYTES = 1 * MIB
"""The rest of a session: its call's buffers and one outgoing message (at most a
second of audio, 384 KiB at 96 kHz in 32-bit floats), its tasks and bookkeeping."""
IDLE_TRIM_DELAY_S = 2.0
"""How long after the last session ended the heap is trimmed."""
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclass(frozen=True)
class MemoryBound:
    """The most a server's memory can grow above its idle level, term by term (bytes)."""

    piper_runs: int
    session_audio: int
    slot_audio: int
    session_text: int
    session_overhead: int

    @property
    def total(self) -> int:
        return (
            self.piper_runs
            + self.session_audio
            + self.slot_audio
            + self.session_text
            + self.session_overhead
        )

    def describe(self) -> str:
        """One line for the log: the total and its terms in MiB."""
        terms = ", ".join(
            f"{name.replace('_', ' ')} {value / MIB:.0f}" for name, value in vars(self).items()
        )
        return f"{self.total / MIB:.0f} MiB above idle ({terms})"


def segment_audio_bytes(max_segment_chars: int) -> int:
    """The most engine audio one segment can make (16-bit samples at the native rate)."""
    return int(max_segment_chars * MAX_AUDIO_S_PER_CHAR * NATIVE_RATE_HZ * 2)


def memory_bound(
    *,
    max_sessions: int,
    piper_workers: int,
    synthesis_slots: int,
    max_segment_chars: int,
    session_audio_buffer_bytes: int,
    max_buffered_text_chars: int,
) -> MemoryBound:
    """The bound for these settings (`synthesis_slots`: every engine's, summed)."""
    segment = segment_audio_bytes(max_segment_chars)
    text_chars = max(MAX_WHOLE_TEXT_CHARS, max_buffered_text_chars)
    return MemoryBound(
        piper_runs=piper_workers * PIPER_RUN_BYTES,
        session_audio=max_sessions * (session_audio_buffer_bytes + segment),
        slot_audio=synthesis_slots * segment,
        session_text=max_sessions * text_chars * BYTES_PER_TEXT_CHAR,
        session_overhead=max_sessions * SESSION_OVERHEAD_BYTES,
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
