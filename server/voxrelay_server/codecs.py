"""The compressed encodings: G.711 (mu-law, A-law) and Ogg Opus.

G.711 is a fixed companding of 16-bit samples into one byte, so it is a lookup in a
table built once (65536 entries per law) from the ITU-T reference algorithm. Opus is
libopus inside libsndfile (the `soundfile` wheel bundles both): libsndfile writes the
Ogg framing into a file-like sink, from which whole pages are taken as they are made.
"""

from __future__ import annotations

import asyncio
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soundfile
from soundfile import _ffi, _snd  # sf_command, for the page latency soundfile does not expose

# --- G.711 -------------------------------------------------------------------------

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _ulaw_table() -> npt.NDArray[np.uint8]:
    """mu-law code of every 16-bit sample, indexed by the sample's bits as uint16."""
    linear = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)
    sign = np.where(linear < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(linear), _ULAW_CLIP) + _ULAW_BIAS
    # The segment is the position of the highest set bit above bit 7 (0 to 7).
    exponent = np.floor(np.log2(magnitude >> 7)).astype(np.int32)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    table: npt.NDArray[np.uint8] = code.astype(np.uint8)
    return table


def _alaw_table() -> npt.NDArray[np.uint8]:
    """A-law code of every 16-bit sample, indexed by the sample's bits as uint16."""
    linear = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32) >> 3
    mask = np.where(linear >= 0, 0xD5, 0x55)
    magnitude = np.where(linear >= 0, linear, -linear - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude)  # first end >= magnitude
    shift = np.where(segment < 2, 1, segment)
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)  # beyond the last segment: clip
    return ((code ^ mask) & 0xFF).astype(np.uint8)


_ULAW = _ulaw_table()
_ALAW = _alaw_table()


def linear_to_ulaw(samples: npt.NDArray[np.int16]) -> bytes:
    """G.711 mu-law codes of 16-bit samples, one byte each."""
    return _ULAW[samples.view(np.uint16)].tobytes()


def linear_to_alaw(samples: npt.NDArray[np.int16]) -> bytes:
    """G.711 A-law codes of 16-bit samples, one byte each."""
    return _ALAW[samples.view(np.uint16)].tobytes()


# --- Ogg Opus ----------------------------------------------------------------------

OPUS_PAGE_LATENCY_MS = 50.0
"""How much audio libsndfile gathers before it closes an Ogg page: its minimum. With
20 ms Opus packets a page then holds three of them (60 ms), about 30 bytes of framing
per page (some 4 kbit/s), and a page leaves the encoder about 80 ms after its first
sample went in."""
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302
_PAGE_HEADER = struct.Struct("<4sBBqIIIB")
_OPUS_GRANULE_RATE = 48000
"""Ogg Opus granule positions always count 48 kHz samples (RFC 7845 section 4)."""


@dataclass(frozen=True, slots=True)
class OggChunk:
    """Whole Ogg pages, and the decoded samples (at the stream's rate) they complete."""

    data: bytes
    samples: int


class _Sink:
    """The file-like object libsndfile writes into: it keeps what is written until
    taken. libsndfile asks for the length and position, and never seeks back when
    writing Ogg, so appending is all it needs."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._written + offset
        if target != self._written:
            raise OSError("the Ogg sink only appends")
        return self._written

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


class OggOpusStream:
    """One logical Ogg Opus stream (a turn), fed float samples at an Opus rate.

    `encode` and `close` return the pages completed so far, grouped into chunks of
    at least `chunk_samples` decoded samples (0: all completed pages as one chunk),
    each chunk's `samples` counted from the pages' granule positions with the
    stream's pre-skip removed, so that their sum is the audio decoded so far.
    Not thread-safe: one caller at a time (it may be a worker thread).
    """

    def __init__(self, rate_hz: int, *, chunk_samples: int = 0) -> None:
        self._rate = rate_hz
        self._factor = _OPUS_GRANULE_RATE // rate_hz
        self._chunk_samples = chunk_samples
        self._sink = _Sink()
        self._file: soundfile.SoundFile | None = None
        self._buffer = b""  # bytes written by libsndfile not yet cut into pages
        self._pending: list[bytes] = []  # whole pages not yet sent (chunk_samples)
        self._pending_samples = 0
        self._preskip = 0
        self._decoded = 0  # samples completed by pages already cut, pre-skip removed
        self.closed = False

    @property
    def started(self) -> bool:
        """Whether any audio went in (the stream's header pages exist)."""
        return self._file is not None

    def encode(self, samples: npt.NDArray[np.float32]) -> list[OggChunk]:
        """Add samples in [-1, 1]; return the chunks of pages now complete."""
        if not samples.size:
            return []
        if self._file is None:
            self._file = soundfile.SoundFile(
                self._sink, "w", self._rate, 1, format="OGG", subtype="OPUS"
            )
            latency = _ffi.new("double*", OPUS_PAGE_LATENCY_MS)
            _snd.sf_command(
                self._file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, latency, _ffi.sizeof("double")
            )
        self._file.write(samples)
        return self._chunks(last=False)

    def close(self) -> list[OggChunk]:
        """End the stream: the rest of its audio and the end-of-stream page."""
        if self.closed:
            return []
        self.closed = True
        if self._file is None:
            return []
        self._file.close()
        return self._chunks(last=True)

    def _chunks(self, *, last: bool) -> list[OggChunk]:
        self._buffer += self._sink.take()
        chunks: list[OggChunk] = []
        for page, granule in self._pages():
            samples = 0
            if granule >= 0:  # -1: no packet ends on this page
                decoded = max(0, (granule - self._preskip) // self._factor)
                samples, self._decoded = decoded - self._decoded, max(self._decoded, decoded)
                samples = max(0, samples)
            self._pending.append(page)
            self._pending_samples += samples
            if self._chunk_samples and self._pending_samples >= self._chunk_samples:
                chunks.append(self._flush())
        # Without a chunk size, the pages of one call go out together; header pages
        # alone wait for the first audio page.
        if self._pending and (last or (not self._chunk_samples and self._pending_samples)):
            chunks.append(self._flush())
        return chunks

    def _flush(self) -> OggChunk:
        chunk = OggChunk(b"".join(self._pending), self._pending_samples)
        self._pending = []
        self._pending_samples = 0
        return chunk

    def _pages(self) -> list[tuple[bytes, int]]:
        """Cut the whole pages off the front of the buffer: (page, granule position)."""
        pages: list[tuple[bytes, int]] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= _PAGE_HEADER.size:
            _, _, _, granule, _, sequence, _, count = _PAGE_HEADER.unpack_from(buffer, start)
            table = start + _PAGE_HEADER.size
            if len(buffer) < table + count:
                break
            end = table + count + sum(buffer[table : table + count])
            if len(buffer) < end:
                break
            if sequence == 0:  # the OpusHead page: its pre-skip is bytes 10-11 of the packet
                head = table + count
                self._preskip = int.from_bytes(buffer[head + 10 : head + 12], "little")
            pages.append((buffer[start:end], granule))
            start = end
        self._buffer = buffer[start:]
        return pages


OPUS_SLICE_S = 0.2
"""Most audio handed to the encoder in one go: an engine may deliver a whole sentence
at once, and its first pages go out after about 5 ms of encoding rather than after
all of it."""
_pool: ThreadPoolExecutor | None = None


def _encoder_pool() -> ThreadPoolExecutor:
    """Threads for Opus encoding (about 25 ms of CPU per second of 24 kHz audio): libopus
    runs without the interpreter lock, off the event loop that serves every session."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="opus")
    return _pool


class OggOpusTurn:
    """The async face of a turn's `OggOpusStream`: encoding runs on worker threads.

    A stream abandoned mid-call (its session went away) is left to the thread
    still encoding it and closed when collected, never touched from two threads.
    """

    def __init__(self, rate_hz: int, *, chunk_samples: int = 0) -> None:
        self._stream = OggOpusStream(rate_hz, chunk_samples=chunk_samples)
        self._slice = max(1, int(rate_hz * OPUS_SLICE_S))

    def slices(self, batch: list[bytes]) -> list[bytes]:
        """Cut float32 LE messages into the pieces `encode` takes."""
        step = self._slice * 4
        return [data[i : i + step] for data in batch for i in range(0, len(data), step)]

    async def encode(self, piece: bytes) -> list[OggChunk]:
        """Chunks of whole pages completed by adding `piece` (float32 LE samples)."""
        loop = asyncio.get_running_loop()
        samples = np.frombuffer(piece, dtype="<f4")
        return await loop.run_in_executor(_encoder_pool(), self._stream.encode, samples)

    async def close(self) -> list[OggChunk]:
        """The rest of the turn's pages, the end-of-stream page last."""
        if not self._stream.started:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_encoder_pool(), self._stream.close)
