"""Turns an engine's raw 16-bit PCM into what the caller asked for.

Per segment: align bytes to whole samples, resample to the requested rate
(libsoxr, streaming, so the head segment still flows as it is produced),
convert to the requested encoding and cut into messages of `chunk_ms`.
Ogg Opus is encoded per turn after this (`voxrelay_server.codecs.OggOpusStream`):
its segments go through here as float samples (`sample_output`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from voxrelay_server.codecs import linear_to_alaw, linear_to_ulaw
from voxrelay_server.settings import AudioEncoding, OutputFormat

_S16LE: np.dtype[np.int16] = np.dtype("<i2")
MAX_MESSAGE_BYTES = 256 * 1024
"""Largest audio message sent; gRPC clients refuse messages over 4 MiB by default."""
MAX_MESSAGE_S = 1.0
"""Longest audio message sent when the caller did not ask for a `chunk_ms`: an engine
may hand over a sentence at once, but a listener playing in real time takes a message
only once it has room for it, and whatever the server sends after (the last messages
of a session cut short) waits behind it."""
INT16_SCALE = 32767.0
"""int16 <-> float32 scale factor, as in the reference pipeline."""


class SampleAligner:
    """Joins byte chunks into whole 16-bit samples, carrying an odd trailing byte over."""

    def __init__(self) -> None:
        self._carry = b""

    def push(self, data: bytes) -> npt.NDArray[np.int16]:
        """Return the complete samples available after appending `data`."""
        if self._carry:
            data = self._carry + data
        usable = len(data) - (len(data) % 2)
        self._carry = data[usable:]
        samples: npt.NDArray[np.int16] = np.frombuffer(data, dtype=_S16LE, count=usable // 2)
        return samples

    @property
    def has_partial_sample(self) -> bool:
        return bool(self._carry)


def int16_to_float32(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """Scale 16-bit samples to floats in [-1, 1] (divide by 32767)."""
    return samples.astype(np.float32) / np.float32(INT16_SCALE)


def float32_to_int16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """Scale floats in [-1, 1] back to 16-bit samples, clipping overshoot."""
    scaled = np.rint(samples * np.float32(INT16_SCALE))
    clipped: npt.NDArray[np.float32] = np.clip(scaled, -INT16_SCALE, INT16_SCALE)
    return clipped.astype(_S16LE)


class SegmentEncoder:
    """Converts one segment's engine PCM into encoded output messages.

    `push` returns the messages that are ready now; `finish` returns the rest
    (the resampler's tail and a final short message).
    """

    def __init__(self, native_rate_hz: int, output: OutputFormat) -> None:
        self._output = output
        self._aligner = SampleAligner()
        self._resampler = (
            soxr.ResampleStream(native_rate_hz, output.sample_rate_hz, 1, dtype="float32")
            if native_rate_hz != output.sample_rate_hz
            else None
        )
        self._chunk_samples = output.sample_rate_hz * output.chunk_ms // 1000
        self._bytes_per_sample = output.encoding.bytes_per_sample
        self._max_message_bytes = max_message_bytes(output)
        # The common case needs no conversion at all: hand the engine's bytes on as they are.
        self._passthrough = (
            self._resampler is None
            and output.encoding is AudioEncoding.PCM_S16LE
            and not self._chunk_samples
        )
        self._pending: list[bytes] = []
        self._pending_samples = 0

    def push(self, pcm: bytes) -> list[bytes]:
        """Feed engine bytes (int16 LE at the native rate); return ready messages."""
        if self._passthrough and not self._aligner.has_partial_sample and not len(pcm) % 2:
            return self._split(pcm) if len(pcm) > self._max_message_bytes else [pcm] if pcm else []
        return self._emit(self._convert(self._aligner.push(pcm), last=False), last=False)

    def finish(self) -> list[bytes]:
        """End of segment: flush the resampler and any partial message."""
        tail = self._convert(np.zeros(0, dtype=_S16LE), last=True)
        return self._emit(tail, last=True)

    def _convert(self, samples: npt.NDArray[np.int16], *, last: bool) -> bytes:
        encoding = self._output.encoding
        if self._resampler is None:
            if not samples.size:
                return b""
            if encoding is AudioEncoding.PCM_F32LE:
                return int16_to_float32(samples).astype("<f4").tobytes()
            return _from_int16(samples, encoding)
        resampled: npt.NDArray[np.float32] = self._resampler.resample_chunk(
            int16_to_float32(samples), last=last
        )
        if encoding is AudioEncoding.PCM_F32LE:
            return np.clip(resampled, -1.0, 1.0).astype("<f4").tobytes()
        return _from_int16(float32_to_int16(resampled), encoding)

    def _emit(self, data: bytes, *, last: bool) -> list[bytes]:
        if not self._chunk_samples:
            return (
                self._split(data) if len(data) > self._max_message_bytes else [data] if data else []
            )
        if data:
            self._pending.append(data)
            self._pending_samples += len(data) // self._bytes_per_sample
        if self._pending_samples < self._chunk_samples and not last:
            return []
        joined = b"".join(self._pending)
        step = self._chunk_samples * self._bytes_per_sample
        full = len(joined) - len(joined) % step
        messages = [joined[i : i + step] for i in range(0, full, step)]
        rest = joined[full:]
        if last and rest:
            messages.append(rest)
            rest = b""
        self._pending = [rest] if rest else []
        self._pending_samples = len(rest) // self._bytes_per_sample
        return messages

    def _split(self, data: bytes) -> list[bytes]:
        """Cut `data` into messages of at most the encoder's limit (whole samples)."""
        step = self._max_message_bytes
        return [data[i : i + step] for i in range(0, len(data), step)]


def _from_int16(samples: npt.NDArray[np.int16], encoding: AudioEncoding) -> bytes:
    if encoding is AudioEncoding.MULAW:
        return linear_to_ulaw(samples)
    if encoding is AudioEncoding.ALAW:
        return linear_to_alaw(samples)
    if encoding is AudioEncoding.PCM_S16LE:
        return samples.tobytes()
    raise ValueError(f"{encoding} is not a sample encoding")


def sample_output(output: OutputFormat) -> OutputFormat:
    """What the per-segment encoder makes for `output`: Ogg Opus is encoded per turn
    from float samples as they are produced, everything else is made right here."""
    if output.encoding is AudioEncoding.OGG_OPUS:
        return OutputFormat(AudioEncoding.PCM_F32LE, output.sample_rate_hz)
    return output


def max_message_bytes(output: OutputFormat) -> int:
    """The largest message of `output` when it has no `chunk_ms`: `MAX_MESSAGE_S` of
    audio, at most `MAX_MESSAGE_BYTES`, always whole samples."""
    per_sample = output.encoding.bytes_per_sample
    samples = min(int(output.sample_rate_hz * MAX_MESSAGE_S), MAX_MESSAGE_BYTES // per_sample)
    return samples * per_sample
