"""Decoding what the server sends in compressed encodings: G.711 codes to samples, and
the sample counts of Ogg Opus pages (decoding Opus itself is libsndfile's job)."""

from __future__ import annotations

import io
import struct

import numpy as np
import numpy.typing as npt
import soundfile


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((codes & 0x0F) << 3) + 0x84) << ((codes & 0x70) >> 4)
    table: npt.NDArray[np.int16] = np.where(
        codes & 0x80, 0x84 - magnitude, magnitude - 0x84
    ).astype("<i2")
    return table


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (codes & 0x70) >> 4
    magnitude = ((codes & 0x0F) << 4) + np.where(segment == 0, 8, 0x108)
    magnitude = np.where(segment > 1, magnitude << np.maximum(segment - 1, 0), magnitude)
    table: npt.NDArray[np.int16] = np.where(codes & 0x80, magnitude, -magnitude).astype("<i2")
    return table


_ULAW = _ulaw_decode_table()
_ALAW = _alaw_decode_table()


def ulaw_to_linear(data: bytes) -> npt.NDArray[np.int16]:
    """16-bit samples of G.711 mu-law codes (ITU-T G.711's reconstruction values)."""
    samples: npt.NDArray[np.int16] = _ULAW[np.frombuffer(data, dtype=np.uint8)]
    return samples


def alaw_to_linear(data: bytes) -> npt.NDArray[np.int16]:
    """16-bit samples of G.711 A-law codes."""
    samples: npt.NDArray[np.int16] = _ALAW[np.frombuffer(data, dtype=np.uint8)]
    return samples


_PAGE = struct.Struct("<4sBBqIIIB")


class OpusPageCounter:
    """Counts the decoded samples each chunk of Ogg Opus pages completes.

    Granule positions count 48 kHz samples from the stream's start, including its
    pre-skip, which the OpusHead page at the start of each turn's stream gives.
    """

    def __init__(self) -> None:
        self._preskip = 0

    def samples_in(self, data: bytes, offset_samples: int, sample_rate_hz: int) -> int:
        """Samples, at `sample_rate_hz`, the pages in `data` complete past `offset_samples`."""
        last_granule = -1
        start = 0
        while start + _PAGE.size <= len(data):
            _, _, kind, granule, _, _, _, count = _PAGE.unpack_from(data, start)
            body = start + _PAGE.size + count
            if kind & 0x02 and data[body : body + 8] == b"OpusHead":  # a new stream
                self._preskip = int.from_bytes(data[body + 10 : body + 12], "little")
            if granule >= 0:
                last_granule = granule
            start = body + sum(data[start + _PAGE.size : body])
        if last_granule < 0:
            return 0
        end = max(0, (last_granule - self._preskip) * sample_rate_hz // 48000)
        return max(0, end - offset_samples)


def decode_ogg_opus(
    data: bytes, dtype: str
) -> tuple[npt.NDArray[np.int16] | npt.NDArray[np.float32], int]:
    """Samples and rate of a complete Ogg Opus stream (libsndfile's decoder); the first
    link only, when `data` is a chain of several."""
    samples, rate = soundfile.read(io.BytesIO(data), dtype=dtype)
    decoded: npt.NDArray[np.int16] | npt.NDArray[np.float32] = samples
    return decoded, int(rate)
