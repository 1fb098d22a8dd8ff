"""The speech service: opens sessions on the right voice, within the server's bounds."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import NoReturn

from voxrelay_server.dispatcher import SessionDispatcher, SessionLimits
from voxrelay_server.engines.base import SynthesisOptions, VoiceInfo
from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.observer import CompositeObserver, SessionObserver
from voxrelay_server.playback import Pacer
from voxrelay_server.scheduler import DeadlineScheduler
from voxrelay_server.settings import Pace, SessionRequest, SessionSettings, validate_request
from voxrelay_server.textclean import without_markup
from voxrelay_server.voices import VoiceCatalog

ObserverFactory = Callable[[str, SessionSettings], SessionObserver]
"""Builds the observer of a new session from its id and settings."""
RejectionHook = Callable[[SpeechError], None]
"""Told about each call that ended before its session started (bad configuration, server
full, no first message, the caller gone), with the status its caller saw."""


class CallSlot:
    """A call's place under `max_sessions`, held from the moment the call opens (before
    its first message) until its session ends or the call ends without one."""

    __slots__ = ("_held", "_on_idle")

    def __init__(self, held: set[CallSlot], on_idle: Callable[[], None] | None = None) -> None:
        self._held = held
        self._on_idle = on_idle
        held.add(self)

    def release(self) -> None:
        """Give the place back (again: no effect); `on_idle` if it was the last one."""
        if self in self._held:
            self._held.discard(self)
            if not self._held and self._on_idle is not None:
                self._on_idle()


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
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.default_max_inflight_segments = default_max_inflight_segments
        self.max_sessions = max_sessions
        self.limits = limits or SessionLimits()
        self._observer_factory = observer_factory
        self._on_rejected = on_rejected
        self._on_idle = on_idle
        """Called on the loop when the last call holding a place has ended."""
        # One pool per engine, shared by every session of the server.
        self.schedulers = {
            engine.name: DeadlineScheduler(engine.max_concurrency) for engine in catalog.engines
        }
        self._sessions: dict[str, SessionDispatcher] = {}
        self._slots: set[CallSlot] = set()

    @property
    def active_sessions(self) -> int:
        """Calls holding a place under `max_sessions`: sessions, and calls not yet
        past their first message."""
        return len(self._slots)

    def voices(self, language: str = "") -> list[VoiceInfo]:
        """Every voice offered, the default first; with `language` (BCP-47), only the
        voices that speak it. A malformed `language` raises INVALID_ARGUMENT."""
        return self.catalog.voices(language)

    def admit(self) -> CallSlot:
        """A place for a new call; RESOURCE_EXHAUSTED when `max_sessions` calls hold one."""
        if len(self._slots) >= self.max_sessions:
            self.reject(
                SpeechError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"the server is at its limit of {self.max_sessions} concurrent sessions: "
                    "retry shortly, or raise --max-sessions",
                )
            )
        return CallSlot(self._slots, self._on_idle)

    def reject(self, error: SpeechError) -> NoReturn:
        """Report a call that ends before its session started, then raise `error`."""
        self.report_unstarted(error)
        raise error

    def report_unstarted(self, error: SpeechError) -> None:
        """Count a call that ended before its session started, with its caller's status."""
        if self._on_rejected is not None:
            self._on_rejected(error)

    def open_session(
        self, request: SessionRequest, slot: CallSlot | None = None
    ) -> SessionDispatcher:
        """A dispatcher for one session; raises `SpeechError` on a bad configuration.

        The session takes `slot` (the call's place, from `admit()`), or admits itself
        (RESOURCE_EXHAUSTED when the server is full), and holds it until its
        `aclose()`. When it cannot open, the slot is released.
        """
        if slot is None:
            slot = self.admit()
        try:
            engine, voice = self.catalog.resolve(request.voice, request.language_code)
            settings = validate_request(
                request,
                voice=voice.name,
                native_sample_rate_hz=voice.native_sample_rate_hz,
                default_max_inflight_segments=self.default_max_inflight_segments,
            )
        except SpeechError as error:
            slot.release()
            self.reject(error)
        session_id = secrets.token_hex(6)
        observers: list[SessionObserver] = [_Deregister(self._sessions, session_id, slot)]
        if self._observer_factory is not None:
            observers.insert(0, self._observer_factory(session_id, settings))
        scheduler = self.schedulers[engine.name]
        options = SynthesisOptions(speed=settings.speed, instructions=settings.instructions)
        # Word timing where the voice gives it; a voice without it sends none (documented).
        timed = settings.word_timestamps and engine.word_timing
        speak = engine.synthesize_words if timed else engine.synthesize
        session = SessionDispatcher(
            lambda text: speak(voice, without_markup(text), options),
            native_rate_hz=voice.native_sample_rate_hz,
            output=settings.output,
            min_sentence_chars=settings.min_sentence_chars,
            language=voice.language_codes[0] if voice.language_codes else "",
            first_clause_words=settings.first_clause_words,
            stall_s=settings.stall_s,
            max_inflight_segments=settings.max_inflight_segments,
            limits=self.limits,
            synthesis_slot=scheduler.slot,
            paused_segment_bytes=engine.paused_segment_bytes,
            stagger_while=scheduler.making_one if engine.faster_alone else None,
            word_timestamps=timed,
            observer=CompositeObserver(observers),
            session_id=session_id,
            voice=voice.name,
            pacer=Pacer() if settings.pace is Pace.REALTIME else None,
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
    """Takes a session off the active list, and gives its place back, when it ends."""

    def __init__(
        self, sessions: dict[str, SessionDispatcher], session_id: str, slot: CallSlot
    ) -> None:
        self._sessions = sessions
        self._session_id = session_id
        self._slot = slot

    def session_ended(self, error: SpeechError | None) -> None:
        self._sessions.pop(self._session_id, None)
        self._slot.release()
