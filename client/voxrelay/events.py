"""What a session yields: audio as numpy arrays and lifecycle events."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Audio:
    """A piece of a turn's audio, in order."""

    samples: npt.NDArray[np.int16] | npt.NDArray[np.float32]
    """Mono samples, shape (n,), in the session's dtype."""
    sample_rate_hz: int
    turn: int
    segment: int
    offset_samples: int
    """Position of the first sample within the turn."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


@dataclass(frozen=True)
class TurnStarted:
    turn: int


@dataclass(frozen=True)
class TurnEnded:
    turn: int
    cancelled: bool = False
    """True when a `cancel()` dropped some or all of the turn's audio."""


@dataclass(frozen=True)
class SessionEnded:
    """The server finished every turn; the stream ends after this."""


Event = Audio | TurnStarted | TurnEnded | SessionEnded
