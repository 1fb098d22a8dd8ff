"""voxrelay: a Python client for the voxrelay streaming speech service.

`AsyncClient` opens sessions that stream text in and ordered audio out;
`Client` and `synthesize()` return the audio of one text in a single call.
"""

from voxrelay.client import (
    AsyncClient,
    AsyncSession,
    Client,
    Session,
    SessionOptions,
    SynthesizedAudio,
    VoiceInfo,
    synthesize,
)
from voxrelay.errors import VoxrelayError
from voxrelay.events import (
    Audio,
    Event,
    Resumed,
    SessionEnded,
    SessionStarted,
    TurnEnded,
    TurnStarted,
    WireEncoding,
    Word,
    Words,
)
from voxrelay.replicas import ConnectionState, RetryPolicy

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Audio",
    "Client",
    "ConnectionState",
    "Event",
    "Resumed",
    "RetryPolicy",
    "Session",
    "SessionEnded",
    "SessionOptions",
    "SessionStarted",
    "SynthesizedAudio",
    "TurnEnded",
    "TurnStarted",
    "VoiceInfo",
    "VoxrelayError",
    "WireEncoding",
    "Word",
    "Words",
    "synthesize",
]
