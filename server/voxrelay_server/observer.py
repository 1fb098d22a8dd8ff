"""Hooks a session reports its progress to: metrics, traces and logs plug in here.

The dispatcher calls these at each step; it neither knows nor cares what
listens. Every method has a no-op default, so an observer implements only what
it needs. Times are taken by the observer (`time.monotonic()`), when called.
"""

from __future__ import annotations

from typing import Any

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
        """Audio messages of the segment were sent, `samples` in all.

        `first` marks the call made right after the segment's first message, which
        is reported alone so that the time of the call is its first audio's. Later
        messages are reported together, once per chunk of engine audio delivered.
        """

    def turn_ended(self, turn: int, *, cancelled: bool) -> None:
        """TURN_ENDED of `turn` was sent."""

    def session_ended(self, error: SpeechError | None) -> None:
        """The session is over: `error` is None when it ended normally (status OK)."""


class CompositeObserver(SessionObserver):
    """Forwards every call to several observers, in order.

    Nested composites are flattened, and each hook calls only the observers that
    override it: `audio_sent` runs for every batch of audio messages, so no-op calls count.
    """

    def __init__(self, observers: list[SessionObserver]) -> None:
        flat: list[SessionObserver] = []
        for observer in observers:
            if isinstance(observer, CompositeObserver):
                flat.extend(observer.observers)
            else:
                flat.append(observer)
        self.observers: list[SessionObserver] = flat

        def overriding(name: str) -> list[Any]:
            base = getattr(SessionObserver, name)
            return [getattr(o, name) for o in flat if getattr(type(o), name) is not base]

        self._turn_started = overriding("turn_started")
        self._segment_released = overriding("segment_released")
        self._segment_started = overriding("segment_started")
        self._segment_engine_first_audio = overriding("segment_engine_first_audio")
        self._segment_synthesized = overriding("segment_synthesized")
        self._audio_sent = overriding("audio_sent")
        self._turn_ended = overriding("turn_ended")
        self._session_ended = overriding("session_ended")

    def turn_started(self, turn: int) -> None:
        for hook in self._turn_started:
            hook(turn)

    def segment_released(self, turn: int, segment: int, text: str) -> None:
        for hook in self._segment_released:
            hook(turn, segment, text)

    def segment_started(self, turn: int, segment: int) -> None:
        for hook in self._segment_started:
            hook(turn, segment)

    def segment_engine_first_audio(self, turn: int, segment: int) -> None:
        for hook in self._segment_engine_first_audio:
            hook(turn, segment)

    def segment_synthesized(
        self, turn: int, segment: int, *, error: SpeechError | None, cancelled: bool
    ) -> None:
        for hook in self._segment_synthesized:
            hook(turn, segment, error=error, cancelled=cancelled)

    def audio_sent(self, turn: int, segment: int, *, samples: int, first: bool) -> None:
        for hook in self._audio_sent:
            hook(turn, segment, samples=samples, first=first)

    def turn_ended(self, turn: int, *, cancelled: bool) -> None:
        for hook in self._turn_ended:
            hook(turn, cancelled=cancelled)

    def session_ended(self, error: SpeechError | None) -> None:
        for hook in self._session_ended:
            hook(error)
