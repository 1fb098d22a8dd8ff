"""The audio formats of `POST /v1/audio/speech`: OpenAI's names for voxrelay's encodings.

Each streams as it is made: raw samples (`pcm`, `mulaw`, `alaw`) need no framing; `wav`
starts with a header whose sizes say "unknown, read to the end" (0xFFFFFFFF, as
streaming WAV writers do), since the length is not known until the audio is; `opus`
is one Ogg Opus stream (the whole text is one turn), a complete `.opus` file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from voxrelay_server.http.errors import RequestError
from voxrelay_server.settings import AudioEncoding

OPENAI_PCM_RATE_HZ = 24000
"""OpenAI's `pcm` and `wav` are 24 kHz: clients that play raw `pcm` assume it."""
TELEPHONY_RATE_HZ = 8000
_UNKNOWN_SIZE = 0xFFFFFFFF
_WAV_PCM = 1


@dataclass(frozen=True)
class ResponseFormat:
    """One `response_format`: what it encodes to, at what rate by default."""

    name: str
    encoding: AudioEncoding
    default_rate_hz: int
    """0: the domain's default (the Opus rate at or above the voice's)."""
    media_type: str

    def content_type(self, rate_hz: int) -> str:
        """The response's Content-Type at `rate_hz` (raw formats name their rate)."""
        if self.encoding is AudioEncoding.MULAW and rate_hz == TELEPHONY_RATE_HZ:
            return "audio/basic"  # RFC 2046: 8 kHz mono mu-law
        if self.name in ("pcm", "mulaw", "alaw"):
            return f"{self.media_type};rate={rate_hz};channels=1"
        return self.media_type

    def header(self, rate_hz: int) -> bytes:
        """Bytes that go before the audio: a streaming WAV header, else nothing."""
        if self.name != "wav":
            return b""
        return wav_header(rate_hz)


FORMATS = {
    f.name: f
    for f in (
        ResponseFormat("wav", AudioEncoding.PCM_S16LE, OPENAI_PCM_RATE_HZ, "audio/wav"),
        ResponseFormat("pcm", AudioEncoding.PCM_S16LE, OPENAI_PCM_RATE_HZ, "audio/pcm"),
        ResponseFormat("opus", AudioEncoding.OGG_OPUS, 0, "audio/ogg; codecs=opus"),
        ResponseFormat("mulaw", AudioEncoding.MULAW, TELEPHONY_RATE_HZ, "audio/PCMU"),
        ResponseFormat("alaw", AudioEncoding.ALAW, TELEPHONY_RATE_HZ, "audio/PCMA"),
    )
}
"""Every `response_format` served."""
DEFAULT_FORMAT = "wav"
"""When the request names none (OpenAI's default, mp3, is not made here)."""
UNSUPPORTED = ("mp3", "aac", "flac")
"""OpenAI's formats that are not made here: a request for one gets 400."""


def response_format(name: object) -> ResponseFormat:
    """The format a request names (None: `DEFAULT_FORMAT`); 400 for any other."""
    if name is None:
        return FORMATS[DEFAULT_FORMAT]
    found = FORMATS.get(name) if isinstance(name, str) else None
    if found is None:
        served = ", ".join(FORMATS)
        why = "is not made by this server" if name in UNSUPPORTED else "is unknown"
        raise RequestError(
            400, f"response_format {name!r} {why}: use one of {served}", param="response_format"
        )
    return found


def wav_header(rate_hz: int) -> bytes:
    """A 44-byte header of 16-bit mono PCM WAV at `rate_hz`, of unknown length."""
    fmt = struct.pack("<HHIIHH", _WAV_PCM, 1, rate_hz, rate_hz * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", _UNKNOWN_SIZE)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", _UNKNOWN_SIZE)
    )
