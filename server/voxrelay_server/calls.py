"""A call's life with its session, for any transport (gRPC, HTTP, WebSocket).

A transport reads its own messages and writes its own responses; everything in
between is here: taking a place under `--max-sessions`, waiting for a call's first
message, opening a session (a whole text's checked first), feeding it a whole text
or a stream of inputs, and turning its events into the transport's messages with a
watchdog on a client that stops reading, then ending the session and giving its place
back however the call ended. `CallRunner` holds what the transports of one server
share: the service (or the wait for it), the call limits and the calls in flight, so
a shutdown drains every transport's calls alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from voxrelay_server.dispatcher import SessionDispatcher, SessionState
from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.events import SessionEnded, SessionEvent, SessionFailed
from voxrelay_server.service import CallSlot, SpeechService
from voxrelay_server.serving import (
    DRAIN_S,
    ActiveCalls,
    CallLimits,
    SendWatchdog,
    ServiceHolder,
)
from voxrelay_server.settings import (
    AudioEncoding,
    SessionRequest,
    check_whole_text,
    whole_text_chunks,
)

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
_In = TypeVar("_In")

CALLER_WENT_AWAY = "the caller went away"


@dataclass(frozen=True)
class CallStarted:
    """The first thing a call whose session opened sends: the session's facts."""

    session_id: str
    voice: str
    encoding: AudioEncoding
    sample_rate_hz: int
    text_budget_chars: int
    pace_lead_ms: int
    """The real-time pace's lead, in ms; 0 when the session is not paced."""

    @classmethod
    def of(cls, session: SessionDispatcher) -> CallStarted:
        """The facts of `session` as opened."""
        return cls(
            session_id=session.session_id,
            voice=session.voice,
            encoding=session.output.encoding,
            sample_rate_hz=session.output.sample_rate_hz,
            text_budget_chars=session.text_budget_chars,
            pace_lead_ms=(round(session.pacer.lead_s * 1000) if session.pacer is not None else 0),
        )


CallEvent = CallStarted | SessionEvent
"""What a call sends, in order: `CallStarted`, then its session's events."""


def caller_went_away() -> SpeechError:
    """Why a call ended that its transport stopped: the caller cancelled or disconnected."""
    return SpeechError(ErrorCode.CANCELLED, CALLER_WENT_AWAY)


def internal_error(session_id: str, during: str) -> SpeechError:
    """Log the exception being handled with its traceback; the error its caller gets."""
    _LOG.exception("unexpected error %s, session %s", during, session_id or "(none)")
    return SpeechError(
        ErrorCode.INTERNAL,
        f"internal error in the server (session {session_id or 'not started'}); it has "
        "been logged: retry, and report it if it persists",
    )


class CallRunner:
    """Runs the calls of every transport of one server on one service."""

    def __init__(
        self,
        service: SpeechService | ServiceHolder,
        limits: CallLimits | None = None,
        calls: ActiveCalls | None = None,
    ) -> None:
        self.service = service if isinstance(service, ServiceHolder) else ServiceHolder(service)
        self.limits = limits or CallLimits()
        self.calls = calls or ActiveCalls()
        self._endings: set[asyncio.Task[None]] = set()
        """Sessions being closed after their call ended (held: a task is weakly kept)."""

    def admit(self) -> tuple[SpeechService, CallSlot]:
        """The service and a place for a new call under `--max-sessions`.

        Raises `SpeechError`: UNAVAILABLE while the voices load, RESOURCE_EXHAUSTED when
        the server is full. The caller must release the slot or give it to a session.
        """
        service = self.service.get()
        return service, service.admit()

    def open_whole_text(
        self,
        request: SessionRequest,
        text: str,
        admitted: tuple[SpeechService, CallSlot] | None = None,
    ) -> SessionDispatcher:
        """A session for one whole text (`Synthesize`, an HTTP speech request) on the
        call's place (`admitted`, from `admit()`, or taken here); raises `SpeechError`
        when the server cannot take it or `text` or `request` are not allowed (each
        reported as a call that did not start, its place given back)."""
        service, slot = admitted or self.admit()
        try:  # a bad text refuses the call before a session opens
            check_whole_text(text)
        except SpeechError as error:
            slot.release()
            service.reject(error)
        return service.open_session(request, slot)

    async def first_input(self, read: Callable[[float | None], Awaitable[_T]]) -> _T:
        """The first message of a streaming call, read with `read(timeout_s)` (which
        raises `TimeoutError`) within the start timeout; the shutdown's error instead if
        the server aborts the calls meanwhile."""
        timeout_s = self.limits.start_timeout_s
        try:
            return await self.calls.unless_aborted(read(timeout_s or None))
        except TimeoutError:
            raise SpeechError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"no request arrived within {timeout_s:g} s of the call opening, and a call "
                "holds a session's place: send config or text as soon as the stream opens",
            ) from None

    async def run(
        self,
        session: SessionDispatcher,
        slot: CallSlot,
        feeder: asyncio.Task[None],
        convert: Callable[[CallEvent], _T],
        *,
        before_first: Callable[[], Awaitable[None]] | None = None,
        ended_by_client: Callable[[], SpeechError] = caller_went_away,
        abandon: Callable[[], None] | None = None,
    ) -> AsyncGenerator[_T, None]:
        """`CallStarted` and then the session's events, each as `convert` makes it, until
        the session ends; then stop `feeder` (the task taking the call's input) and close
        the session, whatever ended the call.

        The transport sends each message before it asks for the next: a message not
        taken within the send timeout ends the session (DEADLINE_EXCEEDED) and gives its
        place back. `before_first` runs before the first message (gRPC's initial
        metadata). A fault here or in `convert` is logged and ends the call with an
        INTERNAL error and `SessionEnded`. When the transport stops the call (its client
        went away), the session ends with `ended_by_client()`.

        `abandon`, when given, drops the call's connection: it is called when a client
        that stopped reading (its session ended by the send timeout) has still not
        taken the message it is blocked on one more send timeout later, so a client
        that never reads again cannot keep the connection, its handler and the
        messages waiting in it for ever (HTTP and WebSocket; gRPC has its keepalive and
        connection age for that).
        """
        self.calls.fail_if_aborted(session)
        timeout_s = self.limits.send_timeout_s
        closing: list[asyncio.Task[None]] = []

        def stalled() -> None:
            # The client has not read for a while: end its session, give its place back
            # and close it now (its metrics and summary too). Its last messages and
            # status follow the message it has not taken, for when (if ever) it reads.
            _LOG.info("session %s: the client stopped reading", session.session_id)
            session.fail(
                SpeechError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"the client did not read for {timeout_s:g} s and its session was ended: "
                    "read the responses as they arrive",
                )
            )
            slot.release()
            closing.append(asyncio.create_task(session.aclose()))
            if abandon is not None:
                # One more send timeout for its last messages, then its connection goes.
                dropping.append(asyncio.get_running_loop().call_later(timeout_s, abandon))

        dropping: list[asyncio.TimerHandle] = []
        watchdog = SendWatchdog(timeout_s, stalled)
        ended_by: SpeechError | None = None
        try:
            if before_first is not None:
                await before_first()
            # The call's first message, before the session's events.
            started = convert(CallStarted.of(session))
            watchdog.sending()
            yield started
            watchdog.sent()
            async for event in session.events():
                message = convert(event)
                watchdog.sending()
                yield message
                watchdog.sent()
        except (asyncio.CancelledError, GeneratorExit):
            ended_by = ended_by_client()
            raise
        except Exception:  # a bug in the dispatcher or the transport's conversion
            ended_by = internal_error(session.session_id, "speaking")
            for event in (SessionFailed(ended_by), SessionEnded()):
                yield convert(event)
        finally:
            watchdog.close()
            for handle in dropping:  # the call ended: nothing to drop
                handle.cancel()
            # Let the client finish sending before the status goes out (DRAIN_S).
            drain = ended_by is None and session.error is not None and not feeder.done()
            # Shielded: when the transport cancels the handler meanwhile (its client went
            # away), the session is still closed and its place given back.
            await asyncio.shield(self.end(session, feeder, ended_by, drain=drain))

    def end(
        self,
        session: SessionDispatcher,
        feeder: asyncio.Task[None],
        ended_by: SpeechError | None,
        *,
        drain: bool = False,
    ) -> asyncio.Task[None]:
        """Stop `feeder` and close `session` (giving its place back) in a task held until
        it is done, so that it finishes even when the awaiting handler is cancelled:
        `run` does this when the call ends, and a transport whose call stopped before
        `run` began must do it itself."""
        ending = asyncio.create_task(end_session(session, feeder, ended_by, drain=drain))
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)
        return ending


async def end_session(
    session: SessionDispatcher,
    feeder: asyncio.Task[None],
    ended_by: SpeechError | None,
    *,
    drain: bool,
) -> None:
    """Stop `feeder` (after up to DRAIN_S for the client to finish sending, with
    `drain`), then close the session."""
    try:
        if drain:
            await asyncio.wait({feeder}, timeout=DRAIN_S)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await session.aclose(ended_by)


async def feed_whole_text(text: str, session: SessionDispatcher) -> None:
    """Give `session` a whole text as one turn, as synthesis frees room in its text
    budget, then close it: what a `Stream` call sending the text and `turn_done`, then
    half-closing, does."""
    try:
        # Small pieces, so each fits the text budget beside what is already queued.
        for chunk in whole_text_chunks(text, session.text_budget_chars // 4):
            await session.send_text_when_room(chunk)
        session.turn_done()
        session.close()
    except SpeechError as error:
        session.fail(error)


async def forward_inputs(
    inputs: AsyncIterable[_In],
    session: SessionDispatcher,
    apply: Callable[[_In, SessionDispatcher], None],
) -> None:
    """Give a streaming call's inputs to its session with `apply` (which raises
    `SpeechError` for an input not allowed); the end of `inputs` (half-close) closes it.

    Once the session has failed, later inputs are read and dropped, so the client can
    finish sending before the call's status goes out (see `DRAIN_S`). A `SpeechError`
    from `inputs` itself (an input that cannot be parsed) fails the session.
    """
    try:
        async for item in inputs:
            if session.state is not SessionState.OPEN:
                continue
            try:
                apply(item, session)
            except SpeechError as error:
                session.fail(error)
        session.close()
    except SpeechError as error:
        session.fail(error)
    except Exception:  # a bug, here or in the dispatcher: logged, the caller told in general
        session.fail(internal_error(session.session_id, "reading requests"))


def apply_first(
    item: _In, session: SessionDispatcher, apply: Callable[[_In, SessionDispatcher], None]
) -> None:
    """Give the session a first input that was not its configuration."""
    try:
        apply(item, session)
    except SpeechError as error:
        session.fail(error)
