"""The speech service: opens sessions on the right voice, within the server's bounds."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import NoReturn

from voxrelay_server.dispatcher import SessionDispatcher, SessionLimits
from voxrelay_server.engines.base import SynthesisOptions, VoiceInfo
from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.observer import CompositeObserver, SessionObserver
from voxrelay_server.scheduler import DeadlineScheduler
from voxrelay_server.settings import SessionRequest, SessionSettings, validate_request
from voxrelay_server.voices import VoiceCatalog

ObserverFactory = Callable[[str, SessionSettings], SessionObserver]
"""Builds the observer of a new session from its id and settings."""
RejectionHook = Callable[[SpeechError], None]
"""Told about each session refused before it started (bad configuration, server full)."""


class SpeechService:
    """What the transport calls: list voices, open sessions, stop them all."""

    def __init__(
        self,
        catalog: VoiceCatalog,
        *,
        default_max_inflight_segments: int,
        max_sessions: int = 256,
        limits: SessionLimits | None = None,
        observer_factory: ObserverFactory | None = None,
        on_rejected: RejectionHook | None = None,
    ) -> None:
        self.catalog = catalog
        self.default_max_inflight_segments = default_max_inflight_segments
        self.max_sessions = max_sessions
        self.limits = limits or SessionLimits()
        self._observer_factory = observer_factory
        self._on_rejected = on_rejected
        # One pool per engine, shared by every session of the server.
        self.schedulers = {
            engine.name: DeadlineScheduler(engine.max_concurrency) for engine in catalog.engines
        }
        self._sessions: dict[str, SessionDispatcher] = {}

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def voices(self) -> list[VoiceInfo]:
        """Every voice offered, the default first."""
        return self.catalog.voices()

    def check_capacity(self) -> None:
        """Raise RESOURCE_EXHAUSTED when the server already runs `max_sessions` sessions."""
        if len(self._sessions) >= self.max_sessions:
            self.reject(
                SpeechError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"the server is at its limit of {self.max_sessions} concurrent sessions: "
                    "retry shortly, or raise --max-sessions",
                )
            )

    def reject(self, error: SpeechError) -> NoReturn:
        """Report a session refused before it started, then raise `error`."""
        if self._on_rejected is not None:
            self._on_rejected(error)
        raise error

    def open_session(self, request: SessionRequest) -> SessionDispatcher:
        """A dispatcher for one session; raises `SpeechError` on a bad configuration.

        Also raises RESOURCE_EXHAUSTED when the server already runs `max_sessions`.
        The session counts until its `aclose()`.
        """
        self.check_capacity()
        try:
            engine, voice = self.catalog.resolve(request.voice)
            settings = validate_request(
                request,
                voice=voice.name,
                native_sample_rate_hz=voice.native_sample_rate_hz,
                default_max_inflight_segments=self.default_max_inflight_segments,
            )
        except SpeechError as error:
            self.reject(error)
        session_id = secrets.token_hex(6)
        observers: list[SessionObserver] = [_Deregister(self._sessions, session_id)]
        if self._observer_factory is not None:
            observers.insert(0, self._observer_factory(session_id, settings))
        scheduler = self.schedulers[engine.name]
        options = SynthesisOptions(speed=settings.speed, instructions=settings.instructions)
        session = SessionDispatcher(
            lambda text: engine.synthesize(voice, text, options),
            native_rate_hz=voice.native_sample_rate_hz,
            output=settings.output,
            min_sentence_chars=settings.min_sentence_chars,
            max_inflight_segments=settings.max_inflight_segments,
            limits=self.limits,
            synthesis_slot=scheduler.slot,
            observer=CompositeObserver(observers),
        )
        self._sessions[session_id] = session
        return session

    def fail_all(self, error: SpeechError) -> None:
        """End every open session with `error` (for example when shutting down)."""
        for session in list(self._sessions.values()):
            session.fail(error)

    async def aclose(self) -> None:
        """Release every engine's threads and connections."""
        for engine in self.catalog.engines:
            await engine.aclose()


class _Deregister(SessionObserver):
    """Takes a session off the active list when it ends."""

    def __init__(self, sessions: dict[str, SessionDispatcher], session_id: str) -> None:
        self._sessions = sessions
        self._session_id = session_id

    def session_ended(self, error: SpeechError | None) -> None:
        self._sessions.pop(self._session_id, None)
