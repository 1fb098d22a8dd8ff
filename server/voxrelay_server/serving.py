"""A server's life around its calls: the service while it loads, the calls in flight.

`ServiceHolder` answers UNAVAILABLE until the voices are loaded; `ActiveCalls`
lets a shutdown wait for the calls in flight and end the rest with a clear status.
Neither knows about speech, only about calls and their lifecycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from voxrelay_server.dispatcher import SessionDispatcher
from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.service import SpeechService

_T = TypeVar("_T")

LOADING_MESSAGE = "the server is still loading its voices; retry shortly"
SHUTTING_DOWN_MESSAGE = "the server is shutting down"


class ServiceHolder:
    """The `SpeechService` once the server has built it; UNAVAILABLE until then.

    The server listens before it loads its voices, so health checks can say
    NOT_SERVING while the default voice loads; Speech calls meanwhile are told
    to retry instead of waiting on a connection that seems dead.
    """

    def __init__(self, service: SpeechService | None = None) -> None:
        self._service = service

    @property
    def current(self) -> SpeechService | None:
        """The service, or None while it is still loading."""
        return self._service

    def set(self, service: SpeechService) -> None:
        """The service is ready: serve calls with it from now on."""
        self._service = service

    def get(self) -> SpeechService:
        """The service; raises `SpeechError` (UNAVAILABLE) while it is still loading."""
        if self._service is None:
            raise SpeechError(ErrorCode.UNAVAILABLE, LOADING_MESSAGE)
        return self._service


class ActiveCalls:
    """The Speech calls in flight, so a shutdown can wait for them and end the rest.

    Open sessions are ended by `SpeechService.fail_all`; this ends the calls that
    have no session yet (waiting for their first request) and any that opens one
    after the abort.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._abort_error: SpeechError | None = None
        self._aborted = asyncio.Event()

    def __len__(self) -> int:
        return self._count

    def track(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Count a call until it is over, its status sent.

        Counting until the handler returns would be too early: a server stopped
        right then could cancel the call before its status went out.
        """
        self._count += 1
        self._idle.clear()
        # types-grpcio declares the callback as a class, not a Protocol: a function is fine.
        context.add_done_callback(self._finished)  # type: ignore[arg-type]

    def _finished(self, _context: object) -> None:
        self._count -= 1
        if not self._count:
            self._idle.set()

    def fail_if_aborted(self, session: SessionDispatcher) -> None:
        """End a session opened after `abort` with the abort's error."""
        if self._abort_error is not None:
            session.fail(self._abort_error)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def abort(self, error: SpeechError) -> None:
        """End calls without a session, and sessions opened from now on, with `error`."""
        self._abort_error = error
        self._aborted.set()

    async def unless_aborted(self, awaitable: Awaitable[_T]) -> _T:
        """Await `awaitable`; raise the `abort` error instead if that comes first.

        For the waits of a call that has no session yet (its first request).
        """
        work = asyncio.ensure_future(awaitable)  # a task even when aborted: awaited, no warning
        aborted = asyncio.ensure_future(self._aborted.wait())
        try:
            done, _ = await asyncio.wait({work, aborted}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            raise
        finally:
            aborted.cancel()
        if work in done:
            return work.result()
        work.cancel()
        assert self._abort_error is not None
        raise self._abort_error
