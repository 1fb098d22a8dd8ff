"""Hooks a session reports its progress to: metrics, traces and logs plug in here.

The dispatcher calls these at each step; it neither knows nor cares what
listens. Every method has a no-op default, so an observer implements only what
it needs. Times are taken by the observer (`time.monotonic()`), when called.
"""

from __future__ import annotations

from voxrelay_server.errors import SpeechError


class SessionObserver:
    """Receives a session's progress. The base class ignores everything."""

    def turn_started(self, turn: int) -> None:
        """TURN_STARTED of `turn` was sent."""

    def segment_released(self, turn: int, segment: int, text: str) -> None:
        """Text completing `segment` arrived; the segment is queued for synthesis."""

    def segment_started(self, turn: int, segment: int) -> None:
        """The segment got a synthesis slot and its engine started."""

    def segment_engine_first_audio(self, turn: int, segment: int) -> None:
        """The engine produced the segment's first audio."""

    def segment_synthesized(
        self, turn: int, segment: int, *, error: SpeechError | None, cancelled: bool
    ) -> None:
        """The engine finished the segment, failed on it, or was stopped."""

    def audio_sent(self, turn: int, segment: int, *, samples: int, first: bool) -> None:
        """An audio message was sent; `first` for the segment's first one."""

    def turn_ended(self, turn: int, *, cancelled: bool) -> None:
        """TURN_ENDED of `turn` was sent."""

    def session_ended(self, error: SpeechError | None) -> None:
        """The session is over: `error` is None when it ended normally (status OK)."""


class CompositeObserver(SessionObserver):
    """Forwards every call to several observers, in order."""

    def __init__(self, observers: list[SessionObserver]) -> None:
        self._observers = observers

    def turn_started(self, turn: int) -> None:
        for observer in self._observers:
            observer.turn_started(turn)

    def segment_released(self, turn: int, segment: int, text: str) -> None:
        for observer in self._observers:
            observer.segment_released(turn, segment, text)

    def segment_started(self, turn: int, segment: int) -> None:
        for observer in self._observers:
            observer.segment_started(turn, segment)

    def segment_engine_first_audio(self, turn: int, segment: int) -> None:
        for observer in self._observers:
            observer.segment_engine_first_audio(turn, segment)

    def segment_synthesized(
        self, turn: int, segment: int, *, error: SpeechError | None, cancelled: bool
    ) -> None:
        for observer in self._observers:
            observer.segment_synthesized(turn, segment, error=error, cancelled=cancelled)

    def audio_sent(self, turn: int, segment: int, *, samples: int, first: bool) -> None:
        for observer in self._observers:
            observer.audio_sent(turn, segment, samples=samples, first=first)

    def turn_ended(self, turn: int, *, cancelled: bool) -> None:
        for observer in self._observers:
            observer.turn_ended(turn, cancelled=cancelled)

    def session_ended(self, error: SpeechError | None) -> None:
        for observer in self._observers:
            observer.session_ended(error)
